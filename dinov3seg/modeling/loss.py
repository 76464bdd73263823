"""Per-pixel binary cross-entropy over one-hot classes."""
import torch
import torch.nn.functional as F

from ..errors import DataError


def sem_seg_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int,
                     ignore_as_negative: bool = False) -> torch.Tensor:
    """
    Args:
        logits: (B, T, H, W) per-class logits at the label resolution.
        targets: (B, H, W) class indices in [0, T) or ``ignore_value``.
        ignore_as_negative: False excludes ignore pixels; True counts them as negatives for every
            class (CAT-Seg's behaviour).
    Returns:
        scalar mean loss over the counted pixels and classes.
    """
    t = logits.shape[1]
    valid = targets != ignore_value
    if (valid & ((targets < 0) | (targets >= t))).any():  # one check (one host sync on GPU)
        raise DataError(f"labels must lie in [0, {t}) or equal the ignore value {ignore_value}; "
                         f"found {targets[valid].unique().tolist()}")
    one_hot = F.one_hot(targets.masked_fill(~valid, 0), t).permute(0, 3, 1, 2).to(logits.dtype)
    one_hot = one_hot * valid[:, None]
    if ignore_as_negative:
        return F.binary_cross_entropy_with_logits(logits, one_hot)
    loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    return (loss * valid[:, None]).sum() / (valid.sum() * t).clamp(min=1)
