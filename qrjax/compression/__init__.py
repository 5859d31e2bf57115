"""qrjax's one error-bounded lossy compressor, shared by the compressed quantum simulator (BMQSim) and the DLRM
embedding all-to-all. `codec` is the variable-length stream (modes, pipeline and format in its docstring);
`fixed` writes the same linear quantiser's codes at a fixed width, for payloads that cross XLA collectives."""

from qrjax.compression import fixed
from qrjax.compression.codec import (COMPLEX_AS, LOSSLESS, MODES, PREDICTORS, Compressed, Meta, compress,
                                     decompress)
from qrjax.compression.bounds import bound_violations, max_error_ratio

__all__ = ["COMPLEX_AS", "LOSSLESS", "MODES", "PREDICTORS", "Compressed", "Meta", "bound_violations", "compress",
           "decompress", "fixed", "max_error_ratio"]
