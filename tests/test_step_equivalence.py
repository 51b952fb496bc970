"""FlowTrainer.step() is pinned bit for bit: weights, sampling snapshot, random generator and
metrics after a few steps of every method, with and without micro-batches, LoRA, a lagging
sampling policy and clipping (the cases' gradient norms are above max_grad_norm = 1 in some
steps and below it in others).

Two checks:
- against digests recorded from the implementation before the step's fixed costs were cut
  (commit cb8ef04); float rounding depends on the torch build and on the CPU code of torch, oneDNN
  and MKL, so they are compared on the build they were recorded on, with the kernels
  :mod:`adrpo.experiments.cpu_kernels` pins (conftest.py pins them: then on any x86-64 CPU);
- against accelerate's own clip_grad_norm_, optimizer step and zero_grad, which the
  trainer skips for torch's calls only where they reduce to them (see
  :func:`adrpo.flow.engine.step_calls`): portable, on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
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
# commit cb8ef04 (before the change) on torch 2.13.0+cpu with MKL's reproducible path (MKL_CBWR=COMPATIBLE,STRICT)
# and each of torch's CPU capabilities (the tests run AVX2's: conftest.py pins them; ATEN_CPU_CAPABILITY=avx512 in
# the environment runs AVX512's). To record them again: `git worktree add /tmp/old cb8ef04`, copy this file into
# /tmp/old/tests/, and there run `PYTHONPATH=. MKL_CBWR=COMPATIBLE,STRICT ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2 python tests/test_step_equivalence.py` (and with avx512).
TORCH = "2.13.0+cpu"
MKL = "COMPATIBLE,STRICT"  # adrpo.experiments.cpu_kernels.KERNELS["MKL_CBWR"] (not importable from cb8ef04)
EXPECTED: dict[str, dict[str, tuple[str, str]]] = {
    "AVX512": {
        "adrpo": (
            "91da64d91ea14ca4f2daaaf24d027cee51d5226e5bf8e156015b453b99695695",
            "90ca0c03930a000e74c0434a12d6230c647d1a907c9c52d4fe5b1f20810a928d",
        ),
        "adrpo_no_clip": (
            "b04454c308a54fedf905828110ac3de1f0e288152bd8253335d82b01b083379a",
            "5560381ac809b0beadfa347ee40a8fe57bd8bd93bf2a93b9951b8f6daa1181a1",
        ),
        "adrpo_micro": (
            "d55ea64bd61ec1f4050ff7f3918bb71445da2759978a1dc4eb6ad89b3919b6bd",
            "a964fbd1e9039d19e51eb89b31d11ab4c6b9c44b10445a71c257178b97cf89e3",
        ),
        "adrpo_lora": (
            "8e4f8f04fb6df059348d91e3b4b2da3a3672fc17093ed238436cb9bb0109ea88",
            "b631db903139924338732572100bf05e5ec3424ea289628a5ffc45a6a4cd439f",
        ),
        "adrpo_refresh": (
            "eba56a7af281dd9b74e68cd235f6ba380916f1c0f324f807776323cba7487556",
            "282d96dcf74921de61ad58f826ef77713bd373477050560555d62c46f1024210",
        ),
        "adrpo_lora_refresh_micro": (
            "0929d0ba5af823158211e8b27dc2e342e80b1c0abccfb55a6b2b23b503747956",
            "b6cbee41f2bb382ac4e635ab4f740b8a3ac22de0e39ac3e481b075deddd3a441",
        ),
        "orw_cfm_w2": (
            "ec305fb532b26c08c083c15158dc99ae5eb26ba08a8577f25ee0b40c3b3a44af",
            "81554c1c71d12e7c5cf75ec4071bcbc00583a2c7c907b65ea6cc6e8d124bc064",
        ),
        "orw_cfm_w2_micro": (
            "1a0f5dc295701f406390ddefa23d69d0d2ef48ca37682bef60ce07e6c800b873",
            "34ad505daeafd7096d254114a4998c1af0d4ae128d4b233d220a2549b023e00a",
        ),
        "raft": (
            "64d8a3e0cc34982feda03222af4be4915e24e0cca90e220b2abd57418a3a9855",
            "ab688a464f0a947cc11e2d676ef400603c9f5fcd5a6ae9f418046ace3400d5ce",
        ),
        "raft_lora_refresh": (
            "5dcca8481884c21b8a161e4df65d00a4c42f6df7ba2b6db9345e8d818e42c6bf",
            "c2ec6c67730d689186986720e31cbca034383457fc9a9d939c6a63512090bb70",
        ),
        "flow_dpo": (
            "04122d00ba6533973bc8b3e1649f5632f981bba07864fdc5a9d73ff748be9437",
            "4e5096c846752a97cc899fa480ef7b72258fa8f26c63feb1f0df9e32297ff1a7",
        ),
        "flow_dpo_micro_diversity": (
            "eb7e1697e974a1e368119dfe51913677f0028df134d7a30efb0b91efd81267ba",
            "4548b10b57f0ec2eb1b48355e943f5dc0b95a8d49bd067efa3381558de60a8cc",
        ),
    },
    "AVX2": {
        "adrpo": (
            "91da64d91ea14ca4f2daaaf24d027cee51d5226e5bf8e156015b453b99695695",
            "90ca0c03930a000e74c0434a12d6230c647d1a907c9c52d4fe5b1f20810a928d",
        ),
        "adrpo_no_clip": (
            "b04454c308a54fedf905828110ac3de1f0e288152bd8253335d82b01b083379a",
            "5560381ac809b0beadfa347ee40a8fe57bd8bd93bf2a93b9951b8f6daa1181a1",
        ),
        "adrpo_micro": (
            "d55ea64bd61ec1f4050ff7f3918bb71445da2759978a1dc4eb6ad89b3919b6bd",
            "a964fbd1e9039d19e51eb89b31d11ab4c6b9c44b10445a71c257178b97cf89e3",
        ),
        "adrpo_lora": (
            "8e4f8f04fb6df059348d91e3b4b2da3a3672fc17093ed238436cb9bb0109ea88",
            "b631db903139924338732572100bf05e5ec3424ea289628a5ffc45a6a4cd439f",
        ),
        "adrpo_refresh": (
            "eba56a7af281dd9b74e68cd235f6ba380916f1c0f324f807776323cba7487556",
            "282d96dcf74921de61ad58f826ef77713bd373477050560555d62c46f1024210",
        ),
        "adrpo_lora_refresh_micro": (
            "0929d0ba5af823158211e8b27dc2e342e80b1c0abccfb55a6b2b23b503747956",
            "b6cbee41f2bb382ac4e635ab4f740b8a3ac22de0e39ac3e481b075deddd3a441",
        ),
        "orw_cfm_w2": (
            "829f7f8ff8bb350d6257da96999aea461663f0712438175844d9365a7d8509e7",
            "1b1a4e9bb957dc9bbae95f4b01eb583fc0abec62ac20df9d8e81e83557ced1a4",
        ),
        "orw_cfm_w2_micro": (
            "1a0f5dc295701f406390ddefa23d69d0d2ef48ca37682bef60ce07e6c800b873",
            "34ad505daeafd7096d254114a4998c1af0d4ae128d4b233d220a2549b023e00a",
        ),
        "raft": (
            "64d8a3e0cc34982feda03222af4be4915e24e0cca90e220b2abd57418a3a9855",
            "ab688a464f0a947cc11e2d676ef400603c9f5fcd5a6ae9f418046ace3400d5ce",
        ),
        "raft_lora_refresh": (
            "5dcca8481884c21b8a161e4df65d00a4c42f6df7ba2b6db9345e8d818e42c6bf",
            "c2ec6c67730d689186986720e31cbca034383457fc9a9d939c6a63512090bb70",
        ),
        "flow_dpo": (
            "04122d00ba6533973bc8b3e1649f5632f981bba07864fdc5a9d73ff748be9437",
            "4e5096c846752a97cc899fa480ef7b72258fa8f26c63feb1f0df9e32297ff1a7",
        ),
        "flow_dpo_micro_diversity": (
            "eb7e1697e974a1e368119dfe51913677f0028df134d7a30efb0b91efd81267ba",
            "4548b10b57f0ec2eb1b48355e943f5dc0b95a8d49bd067efa3381558de60a8cc",
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
    torch.__version__ != TORCH or torch.backends.cpu.get_cpu_capability() not in EXPECTED
    or os.environ.get("MKL_CBWR") != MKL,
    reason=f"digests were recorded on torch {TORCH} with MKL_CBWR={MKL} and the kernels of "
           f"{' and '.join(EXPECTED)}",
)
@pytest.mark.parametrize("case", CASES)
def test_step_matches_the_recorded_implementation_bit_for_bit(tmp_path, case):
    assert digests(build(tmp_path, case)) == EXPECTED[torch.backends.cpu.get_cpu_capability()][case]


def test_the_digests_were_recorded_under_the_mkl_code_experiments_pin():
    """MKL is a copy (this file also runs from cb8ef04, where cpu_kernels is absent): a change of the pin must
    re-record the digests, not skip their test."""
    from adrpo.experiments.cpu_kernels import KERNELS

    assert MKL == KERNELS["MKL_CBWR"]


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


if __name__ == "__main__":  # the digests of this checkout, as JSON (how EXPECTED was recorded)
    torch.set_num_threads(1)
    print(torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR"), file=sys.stderr)
    print(json.dumps({case: digests(build(Path(tempfile.mkdtemp()), case)) for case in CASES}, indent=1))
