"""FlowTrainer.step() is pinned bit for bit: weights, sampling snapshot, random generator and
metrics after a few steps of every method, with and without micro-batches, LoRA, a lagging
sampling policy and clipping (the cases' gradient norms are above max_grad_norm = 1 in some
steps and below it in others).

Two checks:
- against digests recorded from the implementation before the step's fixed costs were cut
  (commit cb8ef04); float rounding of matrix products depends on the torch build and the CPU's
  vector unit, so they are compared only on the build and unit they were recorded on;
- against accelerate's own clip_grad_norm_, optimizer step and zero_grad, which the
  trainer skips for torch's calls only where they reduce to them (see
  :func:`adrpo.flow.engine.step_calls`): portable, on every machine.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator, DistributedType

from adrpo.flow import engine
from adrpo.flow.trainer import FlowTrainer
from conftest import PROMPTS, make_config, target_reward, tiny_model

LORA = {"lora_rank": 2, "lora_target_modules": ["proj_in", "proj"]}
CASES = {
    "adrpo": {},
    "adrpo_no_clip": {"max_grad_norm": None},
    "adrpo_micro": {"micro_batch_size": 3},
    "adrpo_lora": LORA,
    "adrpo_refresh": {"sampler_refresh_every": 2},
    "adrpo_lora_refresh_micro": {**LORA, "sampler_refresh_every": 3, "micro_batch_size": 5},
    "orw_cfm_w2": {"method": "orw_cfm_w2", "orw_normalize": True, "orw_tau": 5.0},
    "orw_cfm_w2_micro": {"method": "orw_cfm_w2", "micro_batch_size": 3},
    "raft": {"method": "raft"},
    "raft_lora_refresh": {"method": "raft", **LORA, "sampler_refresh_every": 2},
    "flow_dpo": {"method": "flow_dpo"},
    "flow_dpo_micro_diversity": {"method": "flow_dpo", "micro_batch_size": 4, "diversity": True},
}
STEPS = 5

# sha256 of the weights + snapshot + generator state and of the metrics rows after STEPS steps, recorded from
# commit cb8ef04 (before the change) on torch 2.13.0+cpu with each CPU capability's kernels (the tests run AVX2's:
# conftest.py pins them; ATEN_CPU_CAPABILITY=avx512 in the environment runs AVX512's). The AVX2 ones were
# recorded later, from cb8ef04 itself, with the script that reproduced the AVX512 ones digit for digit.
TORCH = "2.13.0+cpu"
EXPECTED: dict[str, dict[str, tuple[str, str]]] = {
    "AVX512": {
        "adrpo": (
            "c797e64933752245f78b3d865126ba0cd2bb3d77639e2b94f5a6f31d2b39b813",
            "32f64075e123c754fb37a70b2a9e3344e786e8c3be5ffc217592c27760689da3",
        ),
        "adrpo_no_clip": (
            "1c5b0ff32686c728a9644d9b771754920ac96db6a527a2231ab07afe1c993c13",
            "7c5542f7b706233b978cc596b1b6031bd34dfbdb260a28849f0c4b7f64f2cfd7",
        ),
        "adrpo_micro": (
            "cf5f88cc40691f8dbba751d21f7805328f98cdf8b4b10a3b223e2f1b2404f9c9",
            "5857e3ccdae8127d44412ec4cf74df4ca0cac65fda6dff6b586fa7f2344283d6",
        ),
        "adrpo_lora": (
            "9c4062758412ef24d5fa0bbeaa53d76780396208ef9b6b1305c78212bd42eb58",
            "95b3d81a5bece4c5114cd9941e45bd5c052f2e9fa9687784339cbd4f9360a27c",
        ),
        "adrpo_refresh": (
            "60f3fbe1a1e8bf81385edd0101f6fbb2bd0b575208fe1368d254a70d9a84e411",
            "ad30b04c43a41d8fe5e879b840c283b9b0587100eae4c1f8a63dee7b3a316252",
        ),
        "adrpo_lora_refresh_micro": (
            "1792e28d312de4b012b66d44e77715eb6ca1118aa704e87dca3a9f8b497159ab",
            "91328e90322529bd90ad5fa97f0546b21a1db7acd67424c388c97dd13b8b8b2e",
        ),
        "orw_cfm_w2": (
            "3e54e96de663207126697f60c2d50120ff25d0ef98d0dc1ec188617ba534e3f5",
            "cc806d9dffb2f745d354d40b8dceb550e02853b7f0579e8788dbd7eb09b8f664",
        ),
        "orw_cfm_w2_micro": (
            "c5a8c1a22f4985a90cfa2f1688b14438a54e9161cd5e8b843d5dbe08d28c43fe",
            "530787be2052825260338dd805d1c0d21b29c38c4301a90a554cacffffecd96d",
        ),
        "raft": (
            "54d1f41fbc3a45cee7eccfc69027240ba5ec316a8ff18f795b1bcbc5edf00329",
            "e16e547959ee85bd86e679e826815a031918bef2f34f48da254a6fde215dddb4",
        ),
        "raft_lora_refresh": (
            "0e51dbfd5910ffcd8de634aba4dc7f8baa49fccc70880b8184fe961491a68eac",
            "5edbb0e61b6812de8207475b136253167de56881bc686e8f3281987adb308495",
        ),
        "flow_dpo": (
            "2392f1f7d0930f65f1fef1324222ea232c1514b0dde8bc9a244550bf62dd7542",
            "b43b2486a738695df971e2064b70c4271ceedcdec6aa7320d512294e9247fb15",
        ),
        "flow_dpo_micro_diversity": (
            "2da078357424e41ccffefbded24a127a777f5d91856681f31cad540ed0aa67a9",
            "ca920113a5efbf8dd2b61a67d872993325381b3d7f8c85900f9c6d9b4cd25224",
        ),
    },
    "AVX2": {
        "adrpo": (
            "c797e64933752245f78b3d865126ba0cd2bb3d77639e2b94f5a6f31d2b39b813",
            "32f64075e123c754fb37a70b2a9e3344e786e8c3be5ffc217592c27760689da3",
        ),
        "adrpo_no_clip": (
            "1c5b0ff32686c728a9644d9b771754920ac96db6a527a2231ab07afe1c993c13",
            "7c5542f7b706233b978cc596b1b6031bd34dfbdb260a28849f0c4b7f64f2cfd7",
        ),
        "adrpo_micro": (
            "cf5f88cc40691f8dbba751d21f7805328f98cdf8b4b10a3b223e2f1b2404f9c9",
            "5857e3ccdae8127d44412ec4cf74df4ca0cac65fda6dff6b586fa7f2344283d6",
        ),
        "adrpo_lora": (
            "9c4062758412ef24d5fa0bbeaa53d76780396208ef9b6b1305c78212bd42eb58",
            "95b3d81a5bece4c5114cd9941e45bd5c052f2e9fa9687784339cbd4f9360a27c",
        ),
        "adrpo_refresh": (
            "60f3fbe1a1e8bf81385edd0101f6fbb2bd0b575208fe1368d254a70d9a84e411",
            "ad30b04c43a41d8fe5e879b840c283b9b0587100eae4c1f8a63dee7b3a316252",
        ),
        "adrpo_lora_refresh_micro": (
            "1792e28d312de4b012b66d44e77715eb6ca1118aa704e87dca3a9f8b497159ab",
            "91328e90322529bd90ad5fa97f0546b21a1db7acd67424c388c97dd13b8b8b2e",
        ),
        "orw_cfm_w2": (
            "eeeacc5a48cc51c46c94e35105b90c63c62a69458f56f79468649cd217e10f8e",
            "c219357712740300ceb10b74db9c2c8d4b621f0dcb82b83a3b9ddf4c8af567ef",
        ),
        "orw_cfm_w2_micro": (
            "c5a8c1a22f4985a90cfa2f1688b14438a54e9161cd5e8b843d5dbe08d28c43fe",
            "530787be2052825260338dd805d1c0d21b29c38c4301a90a554cacffffecd96d",
        ),
        "raft": (
            "54d1f41fbc3a45cee7eccfc69027240ba5ec316a8ff18f795b1bcbc5edf00329",
            "e16e547959ee85bd86e679e826815a031918bef2f34f48da254a6fde215dddb4",
        ),
        "raft_lora_refresh": (
            "0e51dbfd5910ffcd8de634aba4dc7f8baa49fccc70880b8184fe961491a68eac",
            "5edbb0e61b6812de8207475b136253167de56881bc686e8f3281987adb308495",
        ),
        "flow_dpo": (
            "2392f1f7d0930f65f1fef1324222ea232c1514b0dde8bc9a244550bf62dd7542",
            "b43b2486a738695df971e2064b70c4271ceedcdec6aa7320d512294e9247fb15",
        ),
        "flow_dpo_micro_diversity": (
            "2da078357424e41ccffefbded24a127a777f5d91856681f31cad540ed0aa67a9",
            "ca920113a5efbf8dd2b61a67d872993325381b3d7f8c85900f9c6d9b4cd25224",
        ),
    },
}


def embed(samples: torch.Tensor) -> torch.Tensor:
    """A fixed diversity embedding of the tiny 4-d samples: (N, 4) -> (N, 2)."""
    return samples[:, :2] * 2.0


def build(tmp_path, case: str, **extra) -> FlowTrainer:
    overrides = {**CASES[case], **extra}
    diversity = overrides.pop("diversity", False)
    config = make_config(tmp_path / case, num_steps=STEPS, **overrides)
    return FlowTrainer(config, tiny_model(), target_reward, PROMPTS, diversity_fn=embed if diversity else None,
                       accelerator=Accelerator(cpu=True))


def digests(trainer: FlowTrainer) -> tuple[str, str]:
    """(state digest, metrics digest) after STEPS calls of step()."""
    rows = [trainer.step() for _ in range(STEPS)]
    state = hashlib.sha256()
    tensors = dict(trainer.policy.state_dict())
    tensors.update({f"snapshot.{k}": v for k, v in (trainer.state.snapshot or {}).items()})
    tensors["generator"] = trainer.state.generator.get_state()
    for name in sorted(tensors):
        state.update(name.encode())
        state.update(tensors[name].detach().contiguous().view(torch.uint8).numpy().tobytes())
    return state.hexdigest(), hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@pytest.mark.skipif(
    torch.__version__ != TORCH or torch.backends.cpu.get_cpu_capability() not in EXPECTED,
    reason=f"digests were recorded on torch {TORCH} with the kernels of {' and '.join(EXPECTED)}",
)
@pytest.mark.parametrize("case", CASES)
def test_step_matches_the_recorded_implementation_bit_for_bit(tmp_path, case):
    assert digests(build(tmp_path, case)) == EXPECTED[torch.backends.cpu.get_cpu_capability()][case]


@pytest.mark.parametrize("case", CASES)
def test_torch_calls_match_accelerates_wrappers_bit_for_bit(tmp_path, case, monkeypatch):
    direct = build(tmp_path / "direct", case)
    assert direct.calls.optimizer is direct.optimizer.optimizer  # the shortcut is really taken
    monkeypatch.setattr(engine, "wrappers_reduce_to_torch", lambda accelerator: False)
    wrapped = build(tmp_path / "wrapped", case)
    assert wrapped.calls.optimizer is wrapped.optimizer
    assert digests(direct) == digests(wrapped)


@pytest.mark.parametrize("case", ["adrpo", "adrpo_lora_refresh_micro", "flow_dpo"])
def test_multi_tensor_adamw_matches_the_per_parameter_loop_bit_for_bit(tmp_path, case, monkeypatch):
    multi = build(tmp_path / "multi", case, weight_decay=0.01)
    assert multi.calls.optimizer.defaults["foreach"] is True
    monkeypatch.setattr(engine, "adamw", lambda params, config: torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=False))
    loop = build(tmp_path / "loop", case, weight_decay=0.01)
    assert loop.calls.optimizer.defaults["foreach"] is False
    assert digests(multi) == digests(loop)


@pytest.mark.parametrize(
    "distributed_type, scaler, reduces",
    [
        (DistributedType.NO, None, True),
        (DistributedType.NO, torch.amp.GradScaler("cpu"), False),  # fp16: unscale, skip steps on overflow
        (DistributedType.MULTI_CPU, None, False),  # DDP
        (DistributedType.MULTI_GPU, None, False),
        (DistributedType.DEEPSPEED, None, False),  # the engine steps and clips itself
        (DistributedType.FSDP, None, False),
        (DistributedType.XLA, None, False),
    ],
)
def test_torch_calls_only_where_accelerate_adds_nothing(distributed_type, scaler, reduces):
    accelerator = SimpleNamespace(distributed_type=distributed_type, scaler=scaler)
    assert engine.wrappers_reduce_to_torch(accelerator) is reduces


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))  # NaN-aware, unlike torch.equal


@pytest.mark.parametrize("entry", [1e-3, 1.0, float("inf"), float("nan")], ids=["within", "clipped", "inf", "nan"])
def test_clip_grad_norm_matches_torch_bit_for_bit(entry):
    generator = torch.Generator().manual_seed(0)
    grads = [1e-3 * torch.randn(shape, generator=generator) for shape in [(32, 36), (32,), (4, 32)]]
    grads[1][0] = entry  # sets the norm; the other gradients stay small and finite
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    assert same_bits(engine.clip_grad_norm_(ours, 1.0), torch.nn.utils.clip_grad_norm_(theirs, 1.0))
    assert all(same_bits(a.grad, b.grad) for a, b in zip(ours, theirs))


def test_a_plain_number_grad_norm_is_logged_as_is(tmp_path):
    trainer = build(tmp_path, "adrpo")
    trainer.calls = engine.StepCalls(lambda parameters, max_norm: 0.25, trainer.calls.optimizer)  # DeepSpeed returns a float
    metrics = trainer.step()
    assert metrics["grad_norm"] == 0.25
    assert all(type(value) is float for value in metrics.values())
