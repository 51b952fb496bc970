"""The synthetic audio benchmark: determinism, splits, balance and clip format; for every question
type a plain numpy analysis that recovers the answer from the signal alone (so the questions are
answerable); the WAV round trip; and files from write_benchmark read back by the MMAU / AVQA loaders."""

from __future__ import annotations

import json
import wave
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from adrpo.data.mmau import choice_prompt, load_avqa, load_mmau
from adrpo.data.synthetic_audio import QUESTION_TYPES, SAMPLE_RATE, make_items, read_wav, write_benchmark, write_wav
from adrpo.errors import ConfigError

FRAME = 80  # 5 ms analysis frames


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """30 items of each of the 8 question types."""
    return make_items(240, split="train", seed=0)


# Question text -> question type, from one generated item of each type.
TYPE_OF_QUESTION = {fn(np.random.default_rng(0), 1.0)[1]: name for name, (_, fn) in QUESTION_TYPES.items()}


def _question_type(row: dict) -> str:
    return TYPE_OF_QUESTION[row["question"]]


# --- analyses that read the answer off the signal -----------------------------------------------


def _frame_rms(audio: np.ndarray) -> np.ndarray:
    """RMS of consecutive 5 ms frames: (N,) -> (N // FRAME,)."""
    n = len(audio) // FRAME
    return np.sqrt(np.mean(audio[: n * FRAME].astype(np.float64).reshape(n, FRAME) ** 2, axis=1))


def _segments(audio: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` frame indices of the runs of frames above a tenth of the loudest frame's RMS
    (the quieter beep is at most 12 dB, a quarter, below the louder; the noise is under 2 %)."""
    rms = _frame_rms(audio)
    on = np.concatenate([[0], (rms > 0.1 * rms.max()).astype(int), [0]])
    edges = np.diff(on)
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _peak_hz(audio: np.ndarray) -> float:
    """Frequency of the largest peak of the Hann-windowed spectrum, zero-padded to 0.25 Hz bins."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=4 * SAMPLE_RATE))
    return float(np.fft.rfftfreq(4 * SAMPLE_RATE, 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def _voiced(audio: np.ndarray) -> np.ndarray:
    start, end = _segments(audio)[0]
    return audio[start * FRAME: end * FRAME].astype(np.float64)


def count_beeps(audio: np.ndarray) -> str:
    return ["one", "two", "three"][len(_segments(audio)) - 1]


def longer_beep(audio: np.ndarray) -> str:
    (a0, a1), (b0, b1) = _segments(audio)
    return "first" if a1 - a0 > b1 - b0 else "second"


def louder_beep(audio: np.ndarray) -> str:
    rms = _frame_rms(audio)
    (a0, a1), (b0, b1) = _segments(audio)
    return "first" if rms[a0:a1].mean() > rms[b0:b1].mean() else "second"


def note_interval(audio: np.ndarray) -> str:
    """The fundamental (1/k partials: the strongest) of the second half against the first half."""
    half = len(audio) // 2
    return "higher" if _peak_hz(audio[half:]) > _peak_hz(audio[:half]) else "lower"


def melody_direction(audio: np.ndarray) -> str:
    third = len(audio) // 3
    return "up" if _peak_hz(audio[2 * third:]) > _peak_hz(audio[:third]) else "down"


def chord_quality(audio: np.ndarray) -> str:
    """The root is the lowest strong spectral peak; compare the spectrum 3 and 4 semitones above it
    (no partial of the root or the fifth falls there)."""
    f = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    magnitude = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    root = f[np.flatnonzero(magnitude > 0.3 * magnitude.max())[0]]

    def near(hz: float) -> float:
        return magnitude[np.abs(f - hz) < 0.015 * hz].max()

    return "major" if near(root * 2 ** (4 / 12)) > near(root * 2 ** (3 / 12)) else "minor"


def vowel_identity(audio: np.ndarray) -> str:
    """From the cepstrally smoothed log spectrum (lifter 50 samples, about 3 ms, shorter than any
    pitch period): F1 above 500 Hz is "a"; otherwise a peak near 2.3 kHz (F2 of "i") stronger than
    one near 870 Hz (F2 of "u") is "i"."""
    size, lifter = 2 ** 15, 50
    voiced = _voiced(audio)
    cepstrum = np.fft.irfft(np.log(np.abs(np.fft.rfft(voiced * np.hanning(len(voiced)), n=size)) + 1e-9))  # (size,)
    taper = np.zeros(size)
    taper[:lifter] = 0.5 + 0.5 * np.cos(np.pi * np.arange(lifter) / lifter)
    taper[size - lifter + 1:] = taper[1:lifter][::-1]
    envelope = np.fft.rfft(cepstrum * taper).real  # (size // 2 + 1,)
    f = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)

    def band(lo: float, hi: float) -> np.ndarray:
        return (f >= lo) & (f < hi)

    if f[band(200, 1000)][np.argmax(envelope[band(200, 1000)])] > 500:
        return "a"
    return "i" if envelope[band(1800, 2800)].max() > envelope[band(650, 1100)].max() else "u"


def voice_pitch(audio: np.ndarray) -> str:
    """f0 from the autocorrelation peak over lags of 70-400 Hz; the classes are 90-130 and 180-260 Hz."""
    voiced = _voiced(audio)
    voiced = voiced - voiced.mean()
    autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(voiced, 2 * len(voiced))) ** 2)[: len(voiced)]
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 70
    f0 = SAMPLE_RATE / (lo + np.argmax(autocorrelation[lo:hi]))
    return "high" if f0 > 155 else "low"


ANALYSES: dict[str, Callable[[np.ndarray], str]] = {
    "beep_count": count_beeps, "longer_beep": longer_beep, "louder_beep": louder_beep, "note_interval": note_interval,
    "melody_direction": melody_direction, "chord_quality": chord_quality, "vowel_identity": vowel_identity,
    "voice_pitch": voice_pitch,
}


@pytest.mark.parametrize("name", list(QUESTION_TYPES))
def test_the_signal_encodes_the_answer(rows, name):
    items = [row for row in rows if _question_type(row) == name]
    assert len(items) == 30
    correct = [ANALYSES[name](row["audio"]) == row["answer"] for row in items]
    assert np.mean(correct) >= 0.95


def test_the_answer_is_recoverable_at_another_duration():
    items = make_items(48, split="test", seed=5, duration=0.5)
    correct = [ANALYSES[_question_type(row)](row["audio"]) == row["answer"] for row in items]
    assert np.mean(correct) >= 0.95


# --- rows, splits and seeds ---------------------------------------------------------------------


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all({k: v for k, v in x.items() if k != "audio"} == {k: v for k, v in y.items() if k != "audio"}
                                    and np.array_equal(x["audio"], y["audio"]) for x, y in zip(a, b))


def test_make_items_is_deterministic_in_its_arguments():
    first = make_items(16, split="train", seed=3)
    assert _same(first, make_items(16, split="train", seed=3))
    other = make_items(16, split="train", seed=4)
    assert not any(np.array_equal(a["audio"], b["audio"]) for a in first for b in other)


def test_train_and_test_are_independent_and_ids_unique():
    train, test = make_items(24, split="train", seed=1), make_items(24, split="test", seed=1)
    assert [r["id"] for r in train[:2]] == ["train-00000", "train-00001"]
    assert all(r["id"].startswith("test-") for r in test)
    ids = [r["id"] for r in train + test]
    assert len(set(ids)) == len(ids) == 48
    train_clips = {r["audio"].tobytes() for r in train}
    assert not any(r["audio"].tobytes() in train_clips for r in test)


def test_categories_and_question_types_are_balanced(rows):
    assert Counter(r["category"] for r in rows) == {"sound": 90, "music": 90, "speech": 60}
    assert Counter(_question_type(r) for r in rows) == dict.fromkeys(QUESTION_TYPES, 30)
    assert [_question_type(r) for r in rows[:8]] != list(QUESTION_TYPES)  # shuffled, not in round-robin order
    uneven = Counter(_question_type(r) for r in make_items(11, split="test"))
    assert sorted(uneven.values()) == [1] * 5 + [2] * 3


def test_rows_have_the_documented_fields_and_answers_among_choices(rows):
    for row in rows:
        assert set(row) == {"id", "question", "choices", "answer", "category", "audio"}
        assert row["answer"] in row["choices"]
        assert all(c.isalpha() and c.islower() for c in row["choices"])
        assert QUESTION_TYPES[_question_type(row)][0] == row["category"]
    for name in QUESTION_TYPES:  # every answer of every type occurs (drawn uniformly, 30 draws each)
        of_type = [r for r in rows if _question_type(r) == name]
        assert {r["answer"] for r in of_type} == set(of_type[0]["choices"])


@pytest.mark.parametrize("duration", [1.0, 0.75])
def test_clips_have_the_right_length_dtype_peak_and_some_noise(duration):
    for row in make_items(16, split="test", seed=2, duration=duration):
        audio = row["audio"]
        assert audio.shape == (round(duration * SAMPLE_RATE),) and audio.dtype == np.float32
        assert 0.2 < np.abs(audio).max() <= 1.0
        assert _frame_rms(audio).min() > 0  # background noise, no digital silence


@pytest.mark.parametrize("kwargs, field", [(dict(n=4, split="val"), "split"), (dict(n=-1, split="train"), "n"),
                                           (dict(n=4, split="train", duration=0.1), "duration"),
                                           (dict(n=4, split="train", seed=-2), "seed")])
def test_make_items_refuses_bad_arguments_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"\b{field} must"):
        make_items(**kwargs)


# --- WAV files ----------------------------------------------------------------------------------


def test_wav_round_trip_within_one_step(tmp_path):
    audio = np.concatenate([[1.0, -1.0, 0.0, 0.5], np.random.default_rng(0).uniform(-1, 1, 1000)]).astype(np.float32)
    write_wav(tmp_path / "x.wav", audio, sample_rate=8000)
    back, rate = read_wav(tmp_path / "x.wav")
    assert rate == 8000 and back.dtype == np.float32 and back.shape == audio.shape
    assert np.abs(back - audio).max() <= 1 / 32768 + 1e-7  # 0.5 step of rounding, 1 step where +1.0 is clipped
    assert np.abs(back[2:] - audio[2:]).max() <= 0.5 / 32768 + 1e-7


def _wav(path: Path, *, channels: int, width: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(bytes(channels * width * 10))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _wav(p, channels=1, width=1), "expected a 16-bit mono PCM WAV file, got 8-bit with 1 channel"),
    (lambda p: _wav(p, channels=1, width=3), "got 24-bit"),
    (lambda p: _wav(p, channels=2, width=2), "got 16-bit with 2 channel"),
    (lambda p: p.write_text("not audio"), "not a PCM WAV file"),
    (lambda p: None, "cannot read the WAV file"),
])
def test_read_wav_refuses_other_files_naming_the_path(tmp_path, make, message):
    path = tmp_path / "odd.wav"
    make(path)
    with pytest.raises(ConfigError, match=message) as info:
        read_wav(path)
    assert str(path) in str(info.value)


def test_write_wav_refuses_multichannel_audio(tmp_path):
    with pytest.raises(ConfigError, match=r"x\.wav: expected 1-D"):
        write_wav(tmp_path / "x.wav", np.zeros((2, 10), dtype=np.float32))


# --- the benchmark on disk ----------------------------------------------------------------------


def test_write_benchmark_is_read_by_the_avqa_and_mmau_loaders(tmp_path):
    folder = tmp_path / "bench"
    train_path, test_path = write_benchmark(folder, train=10, test=6, seed=7, duration=0.5)
    assert (train_path, test_path) == (folder / "train.jsonl", folder / "test.json")
    assert not (tmp_path / "bench.tmp").exists()
    assert json.loads(train_path.read_text().splitlines()[0])["audio_path"].startswith("audio/")
    for loaded, items in [(load_avqa(train_path, check_audio=True), make_items(10, split="train", seed=7, duration=0.5)),
                          (load_mmau(test_path, check_audio=True), make_items(6, split="test", seed=7, duration=0.5))]:
        assert [(r["id"], r["prompt"], r["choices"], r["answer"], r["category"]) for r in loaded] == [
            (i["id"], choice_prompt(i["question"], i["choices"]), i["choices"], i["answer"], i["category"]) for i in items]
        clip, rate = read_wav(loaded[-1]["audio"])
        assert rate == SAMPLE_RATE and np.abs(clip - items[-1]["audio"]).max() <= 0.5 / 32768 + 1e-7


def test_write_benchmark_replaces_a_leftover_staging_folder_and_refuses_a_used_one(tmp_path):
    (tmp_path / "bench.tmp" / "audio").mkdir(parents=True)
    (tmp_path / "bench.tmp" / "stale.wav").touch()
    (tmp_path / "bench").mkdir()  # an empty folder may be filled
    write_benchmark(tmp_path / "bench", train=2, test=2)
    assert not (tmp_path / "bench" / "stale.wav").exists()
    with pytest.raises(ConfigError, match=r"bench: already exists and is not an empty directory"):
        write_benchmark(tmp_path / "bench", train=2, test=2)
