"""lora=on: only the adapters train, the reference is the policy with them switched off, checkpoints hold the
adapters and restore them exactly."""

import pytest
import torch

from conftest import tiny_trainer
from rlhf_lab.run import checkpoint
from rlhf_lab.engine.packing import pack


def frozen_and_trained(module):
    frozen = {k: p.detach().clone() for k, p in module.named_parameters() if not p.requires_grad}
    trained = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    return frozen, trained


def test_only_the_adapters_train_and_the_reference_is_the_policy_without_them(tiny_checkpoints):
    trainer = tiny_trainer(tiny_checkpoints, "lora=on", "lora.rank=4", "preset=vanilla")
    frozen, trained = frozen_and_trained(trainer.policy)
    assert trained and all("lora_" in k for k in trained)
    assert sum(p.numel() for p in trained.values()) < 0.2 * sum(p.numel() for p in frozen.values())
    assert list(trainer.reference.parameters()) == []  # no second copy of the weights
    torch.manual_seed(1)
    batch = trainer.rollout()
    on = batch.mask.bool()
    torch.testing.assert_close(batch.ref_logprobs[on], batch.logprobs[on], rtol=0, atol=1e-5)  # B = 0 at start

    for _ in range(2):
        trainer.step()
    frozen_after, trained_after = frozen_and_trained(trainer.policy)
    assert all(torch.equal(frozen_after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(trained_after[k], v) for k, v in trained.items())
    with torch.no_grad():
        packing, n = pack(batch.ids, batch.attention), batch.tokens.shape[1]
        policy_logits, reference_logits = trainer.policy(packing, n), trainer.reference(packing, n)
        trainer.policy.model.disable_adapter_layers()
        base_logits = trainer.policy(packing, n)
        trainer.policy.model.enable_adapter_layers()
    torch.testing.assert_close(reference_logits, base_logits, rtol=0, atol=0)  # the adapter-free policy
    assert (policy_logits - reference_logits)[on].abs().max() > 1e-4  # the adapters moved the policy


def test_lora_on_the_critic_trains_its_adapters_and_head(tiny_checkpoints):
    trainer = tiny_trainer(tiny_checkpoints, "lora=on", "lora.critic=true", "preset=vanilla")
    frozen, trained = frozen_and_trained(trainer.critic)
    assert any("lora_" in k for k in trained) and any("score" in k for k in trained)
    assert all("lora_" in k or "score" in k for k in trained)
    trainer.step()
    frozen_after, trained_after = frozen_and_trained(trainer.critic)
    assert all(torch.equal(frozen_after[k], v) for k, v in frozen.items())
    assert all(not torch.equal(trained_after[k], v) for k, v in trained.items() if "score" in k)


def test_lora_checkpoint_holds_the_adapters_and_restores_them(tiny_checkpoints, tmp_path):
    overrides = ("lora=on", "lora.rank=4", "preset=vanilla")
    trainer = tiny_trainer(tiny_checkpoints, *overrides)
    trainer.step()
    folder = checkpoint.save(trainer, tmp_path, 1)
    continued = [trainer.step()[0] for _ in range(2)]

    fresh = tiny_trainer(tiny_checkpoints, *overrides)
    assert checkpoint.load(fresh, folder) == 1
    resumed = [fresh.step()[0] for _ in range(2)]
    for a, b in zip(continued, resumed):
        assert {k: v for k, v in a.items() if not k.startswith("perf/")} == \
               {k: v for k, v in b.items() if not k.startswith("perf/")}

    full = tiny_trainer(tiny_checkpoints, "preset=vanilla")  # trainable parameters differ: a named error
    with pytest.raises(ValueError, match="trainable parameters"):
        checkpoint.load(full, folder)
