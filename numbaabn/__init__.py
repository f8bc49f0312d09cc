"""numbaabn: In-Place Activated Batch Normalization for NumPy and CUDA arrays.

See ``README.md`` and ``numbaabn.api`` for the functions and layers.
"""
from . import _config  # noqa: F401  (first: sets OMP_WAIT_POLICY before any pool starts)
from .api import (ABN, BatchNorm, InPlaceABN, InPlaceABNSync, SIGNED_WEIGHT_MIN,
                  SyncBatchNorm, convert_sync_batchnorm, inplace_abn, inplace_abn_backward,
                  inplace_abn_forward)
from .inference import (FusedABN, fold, from_inplace_abn_state_dict, from_paddle_state_dict,
                        from_torch_state_dict)

__version__ = "0.1.0"
__all__ = ["inplace_abn_forward", "inplace_abn_backward", "inplace_abn", "InPlaceABN", "ABN",
           "InPlaceABNSync", "BatchNorm", "SyncBatchNorm", "convert_sync_batchnorm",
           "SIGNED_WEIGHT_MIN", "FusedABN", "fold", "from_torch_state_dict",
           "from_paddle_state_dict", "from_inplace_abn_state_dict"]
