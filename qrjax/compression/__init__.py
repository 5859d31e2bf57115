"""qrjax's one error-bounded lossy compressor, shared by the compressed quantum simulator (BMQSim) and, later, the
DLRM embedding all-to-all. See `codec` for the modes, the pipeline and the stream format."""

from qrjax.compression.codec import (COMPLEX_AS, LOSSLESS, MODES, PREDICTORS, Compressed, Meta, compress,
                                     decompress)
from qrjax.compression.bounds import bound_violations, max_error_ratio

__all__ = ["COMPLEX_AS", "LOSSLESS", "MODES", "PREDICTORS", "Compressed", "Meta", "bound_violations", "compress",
           "decompress", "max_error_ratio"]
