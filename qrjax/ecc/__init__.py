"""Error-correcting codes for watermark payloads: GF(2^m), Reed-Solomon, BCH, bit codes with soft decoding."""

from pallas_kernels.bitpack import pack_bits, unpack_bits
from qrjax.ecc.bch import BCH
from qrjax.ecc.block import DecodeResult
from qrjax.ecc.gf import GaloisField
from qrjax.ecc.rs import ReedSolomon
from qrjax.ecc.bitcode import DEFAULT_WATERMARK_CODE, PRESETS, BitCode, BitDecodeResult, get_code
