import pytest
import torch


def losses_on_fixed_batch(method, images, steps=10, lr=1e-3, before_step=None, after_step=None):
    """Train ``method`` for ``steps`` on one batch and return its losses. Torch is re-seeded before every step so the
    views, corruptions, masks or pretext labels are identical each time: what changes is only the network."""
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        torch.manual_seed(1)
        if before_step is not None:
            before_step()
        loss = method.ssl_loss(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def fixed_batch_losses():
    return losses_on_fixed_batch
