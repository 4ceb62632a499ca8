"""How fine-tuning cuts an epoch into batches: every sample, every epoch (MedMNIST v2 reference loop)."""

from __future__ import annotations

from torch.utils.data import BatchSampler


class EveryBatch(BatchSampler):
    """Every sample of an epoch, the last partial batch kept, as the MedMNIST v2 reference loop does
    (``shuffle=True`` and PyTorch's default ``drop_last=False``), so no image is left out of an epoch.

    One exception, so that no sample is dropped either: a trailing batch of a single sample joins the batch
    before it (``batch_size + 1``), because BatchNorm in training mode cannot normalise one value per channel
    (e.g. a ResNet's 1x1 last stage on 28 px images with the standard stem) and would stop the run.
    """

    def __iter__(self):
        batches = list(super().__iter__())
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2].extend(batches.pop())
        yield from batches

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (rest > 1 or (rest == 1 and full == 0))


def drops_with_full_batches(per_epoch: int, batch_size: int) -> bool:
    """Whether an epoch of ``per_epoch`` samples has a partial last batch that earlier medtransfer releases
    dropped (it kept only full batches whenever more than one batch was drawn): such runs now see every sample,
    so their run ids mark it; runs it never touched keep their ids and stored results."""
    return per_epoch > batch_size and per_epoch % batch_size != 0
