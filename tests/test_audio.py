"""The audio path on TRL's engine (adrpo/llm/audio.py, issue 11).

Parity with stock TRL for every override on text-only batches (each override called on our trainer equals the
same method of a separately built stock ``GRPOTrainer`` on the same model, inputs and random state); on audio batches, per-token
log-probs equal a direct forward of the model on the same inputs; the features follow their rows through TRL's
shuffle, split and buffer; tiny Qwen2-Audio and Qwen2.5-Omni thinker models train end to end with fixed-β GRPO
and with ADRPO (the audio tower learns, the coefficient is logged and equals fixed-β GRPO when collapsed); the
prompts TRL gathers and logs hold a short reference, not the waveform; clips in every form (arrays, paths,
``datasets.Audio`` values decoded or not) are read and resampled; bad audio rows are refused naming the row and
column, and unsupported set-ups at ``__init__``, from the datasets.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import soundfile
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from adrpo.data.audio_clips import load_clip
from adrpo.errors import ConfigError
from adrpo.llm import audio, audio_datasets
from adrpo.llm.audio import AudioGRPOTrainer, with_audio_part
from adrpo.llm.audio_datasets import readable_audio
from adrpo.llm.audio_features import OncePerClip, share_repeated_clips
from adrpo.llm.config import ADRPOConfig
from adrpo.llm.tiny import char_tokenizer, save_model_and_tokenizer, tiny_causal_lm
from adrpo.llm.tiny_audio import CHAT_TEMPLATE, audio_tokens, tiny_audio_lm, tiny_audio_processor
from adrpo.llm.trainer import ADRPOTrainer

CHARS = list("abcdefghijklmnopqrstuvwxyz ?")
RATE = 16000
N_CLIPS = 4  # distinct clips, named in their prompts so a row's clip can be recovered from its tokens


def clip(i: int) -> np.ndarray:
    """Clip ``i``: a tone of 200·(i + 1) Hz lasting 1 − 0.15·i seconds (different lengths, so the masks differ too)."""
    t = np.arange(int(RATE * (1 - 0.15 * i))) / RATE
    return (0.3 * np.sin(2 * np.pi * 200 * (i + 1) * t)).astype(np.float32)


def audio_rows(n_clips: int = N_CLIPS) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"clip {'abcd'[i]}"}], "audio": clip(i)} for i in range(n_clips)]


def vowels(prompts, completions, **kwargs):
    """Vowels in the completion: graded, so the completions of a group usually differ."""
    from adrpo.rewards.text import completion_text

    return [float(sum(completion_text(c).count(v) for v in "aeiou")) for c in completions]


def trainer_args(tmp_path, cls=GRPOConfig, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", disable_tqdm=True, max_steps=2, learning_rate=1e-2, per_device_train_batch_size=8,
        num_generations=4, max_completion_length=4, logging_steps=1, seed=0, beta=0.04,
    )
    values.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**values)


def build(trainer_cls, path, args, rows, processor=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {} if processor is None else {"processing_class": processor}
        return trainer_cls(model=str(path), reward_funcs=vowels, args=args, train_dataset=Dataset.from_list(rows * 2), **extra)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved tiny models: {family: (path, processor)}; Omni's processor cannot be saved (no video processor)."""
    out = {}
    for family in ("qwen2_audio", "qwen2_5_omni"):
        processor = tiny_audio_processor(CHARS, family=family)
        model = tiny_audio_lm(processor, family=family)
        saved = processor if family == "qwen2_audio" else processor.tokenizer
        out[family] = (save_model_and_tokenizer(model, saved, tmp_path_factory.mktemp(family)), processor)
    tokenizer = char_tokenizer(CHARS)
    tokenizer.chat_template = CHAT_TEMPLATE
    out["text"] = (save_model_and_tokenizer(tiny_causal_lm("qwen2", len(tokenizer)), tokenizer, tmp_path_factory.mktemp("text")), None)
    return out


TEXT_ROWS = [{"prompt": [{"role": "user", "content": "ab"}]}, {"prompt": [{"role": "user", "content": "cd"}]}]


@pytest.fixture(scope="module")
def text_trainer(models, tmp_path_factory):
    path, _ = models["text"]
    return build(AudioGRPOTrainer, path, trainer_args(tmp_path_factory.mktemp("t")), TEXT_ROWS)


@pytest.fixture(scope="module")
def stock_trainer(models, tmp_path_factory):
    """A stock GRPOTrainer built like ``text_trainer``: the reference for every parity test."""
    path, _ = models["text"]
    return build(GRPOTrainer, path, trainer_args(tmp_path_factory.mktemp("s")), TEXT_ROWS)


def text_inputs():
    return [{"prompt": [{"role": "user", "content": p}]} for p in ("ab", "cd") for _ in range(4)]


def assert_same(a, b):
    """Equal batch dicts: tensors bitwise, everything else by ==."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ---- parity on text-only batches -------------------------------------------------------------------------------


def test_parity_trainers_start_equal(text_trainer, stock_trainer):
    ours, stock = text_trainer.model.state_dict(), stock_trainer.model.state_dict()
    assert ours.keys() == stock.keys() and all(torch.equal(ours[k], stock[k]) for k in ours)


def test_signature_columns_are_stock_plus_audio(text_trainer, stock_trainer):
    for trainer in (text_trainer, stock_trainer):
        trainer._signature_columns = None
        trainer._set_signature_columns_if_needed()
    assert text_trainer._signature_columns == [*stock_trainer._signature_columns, "audio"]


def test_text_generation_batch_equals_stock(text_trainer, stock_trainer):
    batches = []
    for trainer in (text_trainer, stock_trainer):
        trainer.model.train()
        torch.manual_seed(3)
        batches.append(trainer._generate_and_score_completions(text_inputs()))
    assert_same(*batches)
    assert text_trainer._audio_inputs is None


def test_text_tokenize_prompts_equals_stock(text_trainer, stock_trainer):
    prompts = [row["prompt"] for row in text_inputs()]
    assert text_trainer._tokenize_prompts(prompts) == stock_trainer._tokenize_prompts(prompts)
    assert text_trainer._audio_inputs is None


def sequences(batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A generated batch's (B, P + C) prompt-and-completion ids, their attention mask, and C."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    return ids, mask, batch["completion_ids"].size(1)


def test_text_logps_and_loss_equal_stock(text_trainer, stock_trainer):
    text_trainer.model.train()
    torch.manual_seed(4)
    inputs = text_trainer._generate_and_score_completions(text_inputs())
    ids, mask, keep = sequences(inputs)
    results = []
    for trainer in (text_trainer, stock_trainer):
        trainer.model.train()
        torch.manual_seed(5)
        with torch.no_grad():
            logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, batch_size=3, compute_entropy=True)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.zero_grad(set_to_none=True)
        torch.manual_seed(6)
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        results.append((logps, loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
        trainer.model.zero_grad(set_to_none=True)
    (ours, our_loss, our_grads), (stock, stock_loss, stock_grads) = results
    assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1]) and ours[2] is stock[2] is None
    assert torch.equal(our_loss, stock_loss)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, stock_grads))


def test_text_model_generation_config_is_stock(models, tmp_path):
    path, _ = models["text"]
    rows = [{"prompt": [{"role": "user", "content": "ab"}]}]
    ours = build(AudioGRPOTrainer, path, trainer_args(tmp_path), rows)
    stock = build(GRPOTrainer, path, trainer_args(tmp_path), rows)
    assert ours.generation_config.to_dict() == stock.generation_config.to_dict()
    assert ours.generation_kwargs == stock.generation_kwargs


# ---- audio batches ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["qwen2_audio", "qwen2_5_omni"])
def audio_trainer(request, models, tmp_path_factory):
    path, processor = models[request.param]
    args = trainer_args(tmp_path_factory.mktemp("a"), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                        num_iterations=2)  # each generation trained on twice: TRL scores the old policy too
    trainer = build(AudioGRPOTrainer, path, args, audio_rows(), processor=None if request.param == "qwen2_audio" else processor)
    return request.param, trainer


def audio_inputs():
    return [row for row in audio_rows() for _ in range(4)]  # TRL's sampler repeats each prompt G = 4 times


def expected_features(trainer, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature extractor's (M, F) features and (F,) mask for clip ``i`` alone."""
    out = trainer.processing_class.feature_extractor(clip(i), sampling_rate=RATE, return_attention_mask=True, padding="max_length",
                                                      return_tensors="pt")
    return out["input_features"][0], out["attention_mask"][0]


def clip_of(trainer, prompt_ids: torch.Tensor) -> int:
    """Which clip a row's prompt names ("clip a" ... "clip d")."""
    text = trainer.processing_class.tokenizer.decode(prompt_ids, skip_special_tokens=True)
    return "abcd".index(text.split("clip ")[1][0])


def test_audio_prompt_holds_the_audio_tokens(audio_trainer):
    family, trainer = audio_trainer
    trainer.model.train()
    torch.manual_seed(5)
    batch = trainer._generate_and_score_completions(audio_inputs())
    token = trainer.model.config.audio_token_id
    counts = (batch["prompt_ids"] == token).sum(dim=1)
    lengths = batch["feature_attention_mask"].sum(dim=1) / 100  # seconds: 100 frames per second
    assert counts.tolist() == [audio_tokens(s) for s in lengths.tolist()]
    assert not (batch["completion_ids"] == token).any()  # the audio token is never sampled


def test_audio_features_reach_every_row(audio_trainer):
    family, trainer = audio_trainer
    trainer.model.train()
    torch.manual_seed(6)
    batch = trainer._generate_and_score_completions(audio_inputs())
    assert batch["input_features"].shape[0] == batch["prompt_ids"].shape[0] == 4 * N_CLIPS
    for row in range(batch["prompt_ids"].shape[0]):
        features, mask = expected_features(trainer, clip_of(trainer, batch["prompt_ids"][row]))
        torch.testing.assert_close(batch["input_features"][row], features)
        assert torch.equal(batch["feature_attention_mask"][row].long(), mask.long())


def test_each_distinct_clip_is_extracted_once_and_the_batch_is_unchanged(audio_trainer, monkeypatch):
    """Rows as TRL's dataloader gives them (G equal but separate arrays per prompt): the extractor sees each clip
    once, and the batch equals the one made extracting every copy, bit for bit."""
    family, trainer = audio_trainer
    extractor = trainer.processing_class.feature_extractor
    seen: list[int] = []
    extract = type(extractor).__call__
    monkeypatch.setattr(type(extractor), "__call__", lambda self, raw, *a, **k: seen.append(len(raw)) or extract(self, raw, *a, **k))
    rows = [{**row, "audio": row["audio"].copy()} for row in audio_inputs()]

    def batch():
        trainer.model.train()
        torch.manual_seed(11)
        return trainer._generate_and_score_completions(rows)

    once = batch()
    assert seen == [N_CLIPS] and trainer.processing_class.feature_extractor is extractor  # restored after the call
    monkeypatch.setattr(audio, "share_repeated_clips", lambda clips: clips)  # every copy its own object: extracted each
    every = batch()
    assert seen == [N_CLIPS, 4 * N_CLIPS]
    for key in ("prompt_ids", "completion_ids", "input_features", "feature_attention_mask"):
        assert torch.equal(once[key], every[key]), key


def test_share_repeated_clips_makes_runs_of_equal_clips_one_object():
    a, b = clip(0), clip(1)
    shared = share_repeated_clips([a, a.copy(), b, b.copy(), b.copy(), a.copy(), clip(0)[:-1]])
    assert [x is a for x in shared] == [True, True, False, False, False, False, False]
    assert shared[2] is b and shared[3] is b and shared[4] is b  # each run of equal clips: its first array
    assert shared[5] is not a and np.array_equal(shared[5], a)  # not next to an equal clip: kept as given


@pytest.mark.parametrize("tensors", ["pt", "np", None])
def test_once_per_clip_extractor_repeats_rows_exactly(models, tensors):
    extractor = models["qwen2_audio"][1].feature_extractor
    a, b = clip(0), clip(2)
    kwargs = dict(sampling_rate=RATE, return_attention_mask=True, padding="max_length", return_tensors=tensors)
    once = OncePerClip(extractor)([a, a, b, a], **kwargs)
    every = extractor([a, a.copy(), b, a.copy()], **kwargs)
    assert once.keys() == every.keys()
    for key in every:
        assert type(once[key]) is type(every[key]), key
        assert np.array_equal(np.asarray(once[key]), np.asarray(every[key])), key
    assert OncePerClip(extractor).sampling_rate == extractor.sampling_rate


def direct_logps(model, ids, mask, features, keep):
    """log π(token) and entropy for the last ``keep`` tokens from the model's full logits."""
    logits = model(input_ids=ids, attention_mask=mask, **features).logits[:, -keep - 1 : -1]  # (B, C, V)
    logp = logits.log_softmax(-1)
    return logp.gather(-1, ids[:, -keep:, None])[..., 0], -(logp.exp() * logp).sum(-1)


def test_audio_logps_equal_a_direct_forward(audio_trainer):
    family, trainer = audio_trainer
    trainer.model.train()
    torch.manual_seed(7)
    batch = trainer._generate_and_score_completions(audio_inputs())
    ids, mask, keep = sequences(batch)
    features = {k: batch[k] for k in ("input_features", "feature_attention_mask")}
    with torch.no_grad(), trainer._scoring_audio(features):
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, batch_size=3, compute_entropy=True)
    with torch.no_grad():
        want_logps, want_entropies = direct_logps(trainer.model, ids, mask, features, keep)
        silent, _ = direct_logps(trainer.model, ids, mask, {}, keep) if family == "qwen2_audio" else (None, None)
    valid = batch["completion_mask"].bool()
    torch.testing.assert_close(logps[valid], want_logps[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropies[valid], want_entropies[valid], rtol=1e-5, atol=1e-5)
    if silent is not None:  # the audio changes the log-probs: the features were used, not dropped
        assert not torch.allclose(logps[valid], silent[valid], atol=1e-4)
    # the reference log-probs TRL computed in the same call are the reference model's on the same audio
    with torch.no_grad():
        ref_logps, _ = direct_logps(trainer.ref_model, ids, mask, features, keep)
    torch.testing.assert_close(batch["ref_per_token_logps"][valid], ref_logps[valid], rtol=1e-5, atol=1e-5)


def test_features_follow_their_rows_through_shuffle_split_and_buffer(audio_trainer):
    family, trainer = audio_trainer
    trainer.model.train()
    trainer._step, trainer._buffered_inputs = 0, None
    torch.manual_seed(8)
    first = trainer._prepare_inputs(audio_inputs())  # generation batch of 16 rows, shuffled and split in 2 micro-batches of 8
    assert len(trainer._buffered_inputs) == 2 and first is trainer._buffered_inputs[0]
    seen = set()
    for micro in trainer._buffered_inputs:
        assert micro["input_features"].shape[0] == micro["prompt_ids"].shape[0] == 8
        assert "old_per_token_logps" in micro  # num_iterations 2: the old policy was scored, with audio
        for row in range(8):
            features, _ = expected_features(trainer, clip_of(trainer, micro["prompt_ids"][row]))
            torch.testing.assert_close(micro["input_features"][row], features)
            seen.add(clip_of(trainer, micro["prompt_ids"][row]))
    assert seen == set(range(N_CLIPS))


# ---- end to end: GRPO and ADRPO on both families ------------------------------------------------------------------


@pytest.fixture(scope="module", params=[("qwen2_audio", "grpo"), ("qwen2_audio", "adrpo"), ("qwen2_5_omni", "grpo"), ("qwen2_5_omni", "adrpo")],
                ids=lambda p: "-".join(p))
def run(request, models, tmp_path_factory):
    family, kind = request.param
    path, processor = models[family]
    cls, config = (ADRPOTrainer, ADRPOConfig) if kind == "adrpo" else (AudioGRPOTrainer, GRPOConfig)
    extra = {"adv_coef_scale": 0.04} if kind == "adrpo" else {}
    args = trainer_args(tmp_path_factory.mktemp("run"), cls=config, max_steps=3, **extra)
    trainer = build(cls, path, args, audio_rows(), processor=None if family == "qwen2_audio" else processor)
    calls = []  # features reaching the audio tower in gradient-carrying forwards

    def record(module, args_, kwargs, output):
        if torch.is_grad_enabled():
            calls.append(kwargs.get("input_features", args_[0] if args_ else None))

    tower = trainer.model.model.audio_tower
    handle = tower.register_forward_hook(record, with_kwargs=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    handle.remove()
    after = dict(trainer.model.named_parameters())
    logs = [row for row in trainer.state.log_history if "reward" in row]
    return {"family": family, "kind": kind, "trainer": trainer, "before": before, "after": after, "logs": logs, "calls": calls}


def test_audio_run_trains_the_audio_tower(run):
    moved = {n for n in run["before"] if not torch.equal(run["before"][n], run["after"][n])}
    assert any(".audio_tower." in n for n in moved), "no audio-tower parameter moved"
    assert any(".audio_tower." not in n for n in moved)
    assert len(run["calls"]) == 3 and all(c is not None for c in run["calls"])  # one policy forward per step, with audio


def test_audio_run_logs_finite_metrics_and_the_coefficient(run):
    logs = run["logs"]
    assert len(logs) == 3
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["kl"]) for row in logs)
    if run["kind"] == "adrpo":
        for row in logs:
            assert 0.0 - 1e-6 <= row["adrpo/coef_min"] <= row["adrpo/coef_mean"] <= row["adrpo/coef_max"] <= 0.08 + 1e-6
    else:
        assert not any(key.startswith("adrpo/") for key in logs[0])


def test_collapsed_adrpo_equals_fixed_beta_on_audio(models, tmp_path):
    """ADRPO with the clip range collapsed to c equals GRPO with β = β0 − c on the same audio batch: the
    per-sample coefficient works unchanged through the audio path."""
    path, _ = models["qwen2_audio"]
    c = 0.01
    trainer = build(ADRPOTrainer, path, trainer_args(tmp_path, cls=ADRPOConfig, adv_clip_min=c, adv_clip_max=c), audio_rows())
    trainer.model.train()
    torch.manual_seed(9)
    inputs = trainer._generate_and_score_completions(audio_inputs())
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the reference, so the KL term is not zero
    trainer.current_gradient_accumulation_steps = 1
    adrpo_loss = trainer._compute_loss(trainer.model, inputs)
    beta0, trainer.beta = trainer.beta, trainer.beta - c
    grpo_loss = AudioGRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    trainer.beta = beta0
    torch.testing.assert_close(adrpo_loss, grpo_loss, rtol=1e-6, atol=1e-7)


# ---- clip forms, resampling and refusals ---------------------------------------------------------------------------


class FakeDecoder:
    """Like datasets' torchcodec ``AudioDecoder``: indexable by "array" and "sampling_rate", not a Mapping; its
    "array" is the mean of the channels, and ``metadata.num_channels`` says how many there were."""

    def __init__(self, samples: np.ndarray, rate: int, channels: int = 1):
        self._samples, self._rate = samples, rate
        self.metadata = type("Metadata", (), {"num_channels": channels})()

    def __getitem__(self, key: str):
        if key == "array":
            return self._samples
        if key == "sampling_rate":
            return self._rate
        raise KeyError(key)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_load_clip_forms(tmp_path):
    import soundfile

    samples = clip(0)
    assert load_clip(samples.tolist(), sampling_rate=RATE, where="row 0").dtype == np.float32
    assert np.array_equal(load_clip({"array": samples, "sampling_rate": RATE}, sampling_rate=RATE, where="row 0"), samples)
    soundfile.write(tmp_path / "a.wav", samples, RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_clip(str(tmp_path / "a.wav"), sampling_rate=RATE, where="row 0"), samples)
    np.testing.assert_array_equal(load_clip(tmp_path / "a.wav", sampling_rate=RATE, where="row 0"), samples)
    np.testing.assert_array_equal(load_clip({"path": str(tmp_path / "a.wav")}, sampling_rate=RATE, where="row 0"), samples)
    # undecoded datasets.Audio rows (decode=False): the bytes when present, else the path
    undecoded = {"bytes": wav_bytes(samples, RATE), "path": "not/on/disk.wav"}
    np.testing.assert_array_equal(load_clip(undecoded, sampling_rate=RATE, where="row 0"), samples)
    np.testing.assert_array_equal(load_clip({"bytes": None, "path": str(tmp_path / "a.wav")}, sampling_rate=RATE, where="row 0"), samples)
    # a decoded object that is not a Mapping (np.asarray on it used to fail: "setting an array element with a sequence")
    np.testing.assert_array_equal(load_clip(FakeDecoder(samples, RATE), sampling_rate=RATE, where="row 0"), samples)


@pytest.mark.parametrize(("rate", "seconds"), [(8000, 1.0), (22050, 1.0), (22050, 0.25), (44100, 0.5)])
def test_load_clip_resamples_to_the_processor_rate(rate, seconds):
    """S samples at ``rate`` become ceil(S · 16000 / rate): 8000 -> 16000 and 22050 -> 16000 for one second, 5513 -> 4001
    for 0.25 s at 22.05 kHz (ceil(5512.5 · 320/441) = ceil(4000.36)); a 440 Hz tone stays at 440 Hz."""
    n = int(round(rate * seconds))
    tone = np.sin(2 * np.pi * 440 * np.arange(n) / rate).astype(np.float32)
    want = math.ceil(n * RATE / rate)
    for value in ({"array": tone, "sampling_rate": rate}, {"bytes": wav_bytes(tone, rate), "path": None}, FakeDecoder(tone, rate)):
        out = load_clip(value, sampling_rate=RATE, where="row 0")
        assert out.dtype == np.float32 and out.shape == (want,)
        spectrum = np.abs(np.fft.rfft(out))
        assert abs(np.argmax(spectrum) * RATE / out.size - 440) <= RATE / out.size  # the peak's bin holds 440 Hz


@pytest.mark.parametrize(("value", "message"), [
    ({"array": np.zeros(100), "sampling_rate": 0}, "row 3, column 'audio': the audio's sampling rate must be a positive integer"),
    (np.zeros((2, 100)), "row 3, column 'audio': audio must be one non-empty mono channel"),
    ([], "row 3, column 'audio': audio must be one non-empty mono channel"),
    ("/no/such/file.wav", "row 3, column 'audio': cannot read audio file '/no/such/file.wav'"),
    ({"bytes": b""}, "row 3, column 'audio': an audio mapping needs 'array'"),
    ({"bytes": wav_bytes(np.zeros((100, 2), dtype=np.float32), RATE), "path": "s.wav"}, "row 3, column 'audio': audio file 's.wav' has 2 channels"),
    (FakeDecoder(np.zeros(100, dtype=np.float32), RATE, channels=2), "row 3, column 'audio': the decoded audio has 2 channels"),
    (FakeDecoder(np.zeros(0, dtype=np.float32), RATE), "row 3, column 'audio': audio must be one non-empty mono channel"),
])
def test_load_clip_refusals_name_the_row_and_column(value, message):
    with pytest.raises(ConfigError, match=message):
        load_clip(value, sampling_rate=RATE, where="row 3, column 'audio'")


def test_stereo_file_is_refused(tmp_path):
    import soundfile

    soundfile.write(tmp_path / "s.wav", np.zeros((100, 2), dtype=np.float32), RATE)
    with pytest.raises(ConfigError, match="2 channels"):
        load_clip(str(tmp_path / "s.wav"), sampling_rate=RATE, where="row 0")


def test_with_audio_part_fills_the_placeholder_or_prepends():
    samples = clip(1)
    placed = with_audio_part([{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "audio"}]}], samples, where="row 0")
    assert placed[0]["content"][1]["audio"] is samples and placed[0]["content"][0] == {"type": "text", "text": "q"}
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    prepended = with_audio_part(prompt, samples, where="row 0")
    assert prepended[1]["content"][0]["audio"] is samples and prepended[1]["content"][1] == {"type": "text", "text": "q"}
    assert prompt[1]["content"] == "q"  # the input is not modified
    with pytest.raises(ConfigError, match="row 2: audio rows need a conversational prompt"):
        with_audio_part("q", samples, where="row 2")
    with pytest.raises(ConfigError, match="row 2: the prompt has 2 audio parts"):
        with_audio_part([{"role": "user", "content": [{"type": "audio"}, {"type": "audio"}]}], samples, where="row 2")


def test_a_batch_mixing_audio_and_text_rows_is_refused(audio_trainer):
    _, trainer = audio_trainer
    rows = audio_inputs()
    rows[5] = {"prompt": rows[5]["prompt"]}
    with pytest.raises(ConfigError, match=r"batch row 5 of an audio batch have no audio"):
        trainer._generate_and_score_completions(rows)


def test_audio_batch_on_a_trainer_built_without_audio_is_refused(text_trainer):
    with pytest.raises(ConfigError, match="audio rows, but the trainer's datasets had none when it was built"):
        text_trainer._generate_and_score_completions(audio_inputs())


def test_audio_rows_on_a_text_model_are_refused_at_init(models, tmp_path):
    path, _ = models["text"]
    with pytest.raises(ConfigError, match="train_dataset hold audio, but the processor .* has no feature_extractor"):
        build(AudioGRPOTrainer, path, trainer_args(tmp_path), audio_rows())


def test_unsupported_audio_setups_are_refused_at_init_from_the_datasets(models, tmp_path, monkeypatch):
    """Every rank builds the trainer from the same datasets, so each refuses alike; vLLM is refused before TRL starts it."""
    path, _ = models["qwen2_audio"]
    started = []
    real_init = GRPOTrainer.__init__

    @functools.wraps(real_init)
    def init(self, *args, **kwargs):
        started.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "__init__", init)
    with pytest.raises(ConfigError, match="train_dataset hold audio, which is trained with transformers' generate only; not with use_vllm"):
        build(AudioGRPOTrainer, path, trainer_args(tmp_path, use_vllm=True), audio_rows())
    with pytest.raises(ConfigError, match="not with tools"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            AudioGRPOTrainer(model=str(path), reward_funcs=vowels, args=trainer_args(tmp_path), train_dataset=Dataset.from_list(audio_rows()),
                             tools=[vowels])
    assert not started
    text_row = {"prompt": [{"role": "user", "content": "no clip"}], "audio": None}
    with pytest.raises(ConfigError, match=r"eval_dataset: no audio in row 1, row 3: every row of a dataset with an 'audio' column"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            AudioGRPOTrainer(str(path), vowels, trainer_args(tmp_path), Dataset.from_list(audio_rows()),
                             Dataset.from_list([audio_rows()[0], text_row, audio_rows()[1], text_row]))
    assert not started


def part_rows(tmp_path, with_audio: list[bool]) -> list[dict]:
    """Rows whose clip (a WAV file) is an audio part of the prompt, or only text where ``with_audio`` is False."""
    rows = []
    for i, has in enumerate(with_audio):
        soundfile.write(tmp_path / f"{i}.wav", clip(i % N_CLIPS), RATE)
        parts = [{"type": "audio", "audio": str(tmp_path / f"{i}.wav")}] if has else []
        rows.append({"prompt": [{"role": "user", "content": [*parts, {"type": "text", "text": f"clip {'abcd'[i % N_CLIPS]}"}]}]})
    return rows


def test_prompt_audio_is_found_in_every_row_from_arrow(tmp_path):
    """Audio parts are found in any row (a text-only row 0 included) and through an index mapping (select), without
    reading a clip; prompts that cannot hold audio parts give None."""
    rows = part_rows(tmp_path, [False, True, True, False, True])
    dataset = Dataset.from_list(rows)
    assert audio_datasets.prompt_audio_flags(dataset).tolist() == [False, True, True, False, True]
    assert audio_datasets.prompt_audio_flags(dataset.select([4, 0, 2])).tolist() == [True, False, True]
    assert audio_datasets.has_audio(dataset) and audio_datasets.rows_without_audio(dataset) == [0, 3]
    assert not audio_datasets.has_audio(Dataset.from_list(part_rows(tmp_path, [False, False])))
    assert audio_datasets.prompt_audio_flags(Dataset.from_list([{"prompt": "plain"}])) is None
    assert audio_datasets.prompt_audio_flags(Dataset.from_list([{"prompt": [{"role": "user", "content": "text"}]}])) is None


def test_prompt_audio_after_a_text_row_0_is_refused_at_init(models, tmp_path, monkeypatch):
    """A dataset whose audio sits in prompt parts from row 1 on is checked at __init__ from all its rows, on every rank
    alike: rows without a clip are named, and vLLM is refused before TRL's __init__ starts it."""
    path, _ = models["qwen2_audio"]
    started = []
    monkeypatch.setattr(GRPOTrainer, "__init__", functools.wraps(GRPOTrainer.__init__)(lambda self, *a, **k: started.append(1)))
    rows = part_rows(tmp_path, [False, True, True, True])
    with pytest.raises(ConfigError, match=r"train_dataset: no audio in row 0, row 4: every row of a dataset with audio parts in its prompts"):
        build(AudioGRPOTrainer, path, trainer_args(tmp_path), rows)
    with pytest.raises(ConfigError, match="train_dataset hold audio, which is trained with transformers' generate only; not with use_vllm"):
        build(AudioGRPOTrainer, path, trainer_args(tmp_path, use_vllm=True), rows[1:])
    assert not started


def test_logged_prompts_hold_a_reference_not_the_waveform(models, tmp_path):
    """TRL gathers every rank's prompts and, with log_completions, writes them to parquet (stripping images only): the
    audio part of each holds a short reference string (the row's id here), never the clip's samples."""
    import pandas as pd

    path, _ = models["qwen2_audio"]
    rows = [{**row, "id": "abcd"[i]} for i, row in enumerate(audio_rows())]
    args = trainer_args(tmp_path, max_steps=1, log_completions=True)
    trainer = build(AudioGRPOTrainer, path, args, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()

    def audio_parts(prompt):
        return [part for message in prompt if isinstance(message["content"], (list, np.ndarray)) for part in message["content"]
                if part["type"] == "audio"]

    logged = list(trainer._logs["prompt"])
    assert len(logged) == 8
    for prompt in logged:
        (part,) = audio_parts(prompt)
        assert isinstance(part["audio"], str) and len(part["audio"]) < 40 and part["audio"].startswith("<audio: id '")
    table = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    for prompt in table["prompt"]:
        (part,) = audio_parts(prompt)
        assert part["audio"] in {f"<audio: id '{c}', {len(clip(i)) / RATE:.2f} s>" for i, c in enumerate("abcd")}


def test_omni_thinker_of_a_full_checkpoint_trains_with_its_own_reference(models, tmp_path, monkeypatch):
    """``omni-thinker:SOURCE``: the thinker of a whole Qwen2.5-Omni checkpoint, saved once, is what TRL loads for
    the policy and rebuilds for the reference (the whole model's architecture would be loaded otherwise)."""
    import transformers
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerForConditionalGeneration

    from adrpo.llm.models import resolve_model_path

    _, processor = models["qwen2_5_omni"]
    thinker = tiny_audio_lm(processor, family="qwen2_5_omni", seed=3)
    whole = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False))
    source = save_model_and_tokenizer(whole, processor.tokenizer, tmp_path / "omni")
    # the tiny processor has no video processor (torchvision is not installed), so it cannot be saved or loaded:
    # the conversion copies its tokenizer here; a hub checkpoint's processor loads and saves whole
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *args, **kwargs: processor.tokenizer)
    folder = resolve_model_path(f"omni-thinker:{source}", tmp_path / "cache")
    assert resolve_model_path(f"omni-thinker:{source}", tmp_path / "cache") == folder  # converted once
    trainer = build(ADRPOTrainer, folder, trainer_args(tmp_path, cls=ADRPOConfig, max_steps=1), audio_rows(), processor=processor)
    assert type(trainer.ref_model) is Qwen2_5OmniThinkerForConditionalGeneration
    thinker_weights = {k.removeprefix("thinker."): v for k, v in whole.state_dict().items()}
    assert all(torch.equal(v, thinker_weights[k]) for k, v in trainer.ref_model.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[0]["loss"])


def test_audio_arrays_reach_the_trainer_as_numpy(models, tmp_path):
    """Dataset.from_list stores clips as lists; read back as lists, accelerate would walk them sample by sample."""
    path, _ = models["qwen2_audio"]
    trainer = build(AudioGRPOTrainer, path, trainer_args(tmp_path), audio_rows())
    row = trainer.train_dataset[0]
    assert isinstance(row["audio"], np.ndarray) and row["audio"].dtype == np.float32
    assert row["prompt"] == [{"role": "user", "content": "clip a"}]  # the other columns as before
    paths = Dataset.from_list([{"prompt": "p", "audio": "a.wav"}])
    assert readable_audio(paths) is paths  # paths are left alone


def test_audio_given_as_a_prompt_part_with_a_file_path(audio_trainer, tmp_path):
    """No audio column: the clip is the payload of the prompt's audio part (a path, read with soundfile)."""
    import soundfile

    _, trainer = audio_trainer
    for i in range(N_CLIPS):
        soundfile.write(tmp_path / f"{i}.wav", clip(i), RATE, subtype="FLOAT")
    rows = [{"prompt": [{"role": "user", "content": [{"type": "audio", "audio": str(tmp_path / f"{i}.wav")},
                                                     {"type": "text", "text": f"clip {'abcd'[i]}"}]}]}
            for i in range(N_CLIPS) for _ in range(4)]
    trainer.model.train()
    torch.manual_seed(10)
    batch = trainer._generate_and_score_completions(rows)
    for row in range(len(rows)):
        features, _ = expected_features(trainer, clip_of(trainer, batch["prompt_ids"][row]))
        torch.testing.assert_close(batch["input_features"][row], features)
