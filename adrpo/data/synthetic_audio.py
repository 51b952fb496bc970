"""A synthetic, seeded multiple-choice audio QA benchmark: a miniature stand-in for MMAU.

Every clip is generated with numpy alone from a seed: no download, and small enough to fine-tune a
tiny audio-language model on a CPU. It mimics MMAU's *format* and its three categories; it is not a
sample of MMAU, and accuracy on it says nothing about accuracy on MMAU.

**Clips**: 1-D ``np.float32`` arrays of ``round(duration * SAMPLE_RATE)`` samples (16 kHz, the
rate of Whisper's log-mel features), peak amplitude at most 0.9, with a little seeded white
background noise. Every time in a clip (onsets, lengths, gaps) is a fraction of ``duration``,
so the questions read the same at any duration of at least :data:`MIN_DURATION` seconds.

**Question types** (:data:`QUESTION_TYPES`, in their fixed round-robin order), each a small pure
function ``(rng, duration) -> (audio, question, choices, answer)``:

- ``sound``: pure-tone beeps with a random frequency, random onsets, gaps and lengths:

  - "How many beeps are there?" ``["one", "two", "three"]``;
  - "Which beep is longer?" ``["first", "second"]``: lengths differ by a factor of 2 to 3;
  - "Which beep is louder?" ``["first", "second"]``: levels differ by 6 to 12 dB.

- ``music``: notes of a harmonic tone (four partials, amplitudes 1/k) on the equal-tempered scale:

  - "Is the second note higher or lower than the first?" ``["higher", "lower"]``: 2 to 7
    semitones apart, random base pitch;
  - "Is the melody going up or down?" ``["up", "down"]``: three notes, each step 2 to 4
    semitones in the same direction;
  - "Is the chord major or minor?" ``["major", "minor"]``: root, third and fifth sounding
    together, random root (C3 to G4).

- ``speech``: formant-synthesised vowels: a glottal pulse train (f0 with a slight vibrato,
  -12 dB/octave source tilt) through three resonators at the vowel's formants (``a`` ≈ 730 /
  1090 / 2440 Hz, ``i`` ≈ 270 / 2290 / 3010, ``u`` ≈ 300 / 870 / 2240, each jittered by up to
  ±6 %), then a first difference for the lip radiation:

  - "Which vowel is spoken?" ``["a", "i", "u"]``: f0 drawn in 90 to 220 Hz;
  - "Is the voice low or high?" ``["low", "high"]``: f0 in 90 to 130 Hz or 180 to 260 Hz,
    random vowel.

Choices are single short lowercase words (the model's tokenizer is character level). **Rows** (:func:`make_items`) are plain dicts::

    {"id": str, "question": str, "choices": list[str], "answer": str,
     "category": "sound" | "music" | "speech", "audio": np.ndarray}

``answer`` is one of ``choices``; answers are drawn uniformly among the choices.

**Splits and seeds**: ``make_items(n, split=..., seed=...)`` assigns question types round-robin in
the fixed order (so categories and types are balanced to within one item), shuffles them, then
generates the clips, all from one stream ``np.random.default_rng([seed, split_index])`` (train 0,
test 1): the same arguments give the same rows and arrays, and the train and test splits of one
seed are independent draws. Ids are the split and the row's position, ``"train-00012"``.

**Files** (:func:`write_benchmark`): the clips as 16-bit mono WAV under ``folder/audio/``, the
train split as AVQA-style JSON Lines (``train.jsonl``, read by :func:`adrpo.data.mmau.load_avqa`)
and the test split in the MMAU format (``test.json``, read by :func:`adrpo.data.mmau.load_mmau`).
"""

from __future__ import annotations

import json
import os
import shutil
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adrpo.errors import ConfigError

SAMPLE_RATE = 16000
MIN_DURATION = 0.5
SPLITS = ("train", "test")

# Vowel formants (Hz), after Peterson & Barney (1952), adult male averages.
FORMANTS = {"a": (730.0, 1090.0, 2440.0), "i": (270.0, 2290.0, 3010.0), "u": (300.0, 870.0, 2240.0)}
FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)

Clip = tuple[np.ndarray, str, list[str], str]  # (audio (N,) float32, question, choices, answer)
QuestionFn = Callable[[np.random.Generator, float], Clip]


# --- building blocks --------------------------------------------------------------------------


def _samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def _ramped(signal: np.ndarray, *, ramp: float = 0.005) -> np.ndarray:
    """``signal`` (S,) with raised-cosine fade-in and fade-out of ``ramp`` seconds (at most S/4
    samples each), so that onsets do not click."""
    k = min(_samples(ramp), len(signal) // 4)
    fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)  # (k,)
    envelope = np.ones(len(signal))
    envelope[:k] = fade
    envelope[len(signal) - k:] = fade[::-1]
    return signal * envelope


def _tone(frequency: float, seconds: float, *, partials: int = 1) -> np.ndarray:
    """A ramped harmonic tone of ``seconds``: (S,), partial k at ``k * frequency`` with amplitude
    1/k (partials above 7.5 kHz are left out), peak about 1."""
    t = np.arange(_samples(seconds)) / SAMPLE_RATE  # (S,)
    ks = [k for k in range(1, partials + 1) if k * frequency < 7500.0]
    signal = sum(np.sin(2 * np.pi * k * frequency * t) / k for k in ks)
    return _ramped(signal / sum(1.0 / k for k in ks))


def _midi_hz(note: float) -> float:
    """Equal-tempered frequency of a MIDI note number (69 = A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def _mix(duration: float, parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """The (N,) sum of ``(onset seconds, segment)`` parts placed on a silent clip of ``duration``."""
    clip = np.zeros(_samples(duration))
    for onset, segment in parts:
        start = _samples(onset)
        clip[start:start + len(segment)] += segment[:len(clip) - start]
    return clip


def _onsets(rng: np.random.Generator, lengths: list[float], duration: float, *, min_gap: float) -> list[float]:
    """Onsets (seconds) of segments of ``lengths`` laid out in order with random gaps of at least
    ``min_gap`` before, between and after them; the lengths and gaps must fit in ``duration``."""
    free = duration - sum(lengths) - (len(lengths) + 1) * min_gap
    gaps = min_gap + free * rng.dirichlet(np.ones(len(lengths) + 1))  # (K + 1,)
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])  # (K,)
    return [float(s) for s in starts]


def _finish(rng: np.random.Generator, signal: np.ndarray) -> np.ndarray:
    """``signal`` (N,) with white background noise at 0.5-2 % of its peak, scaled to a random
    peak in [0.3, 0.9]: (N,) float32."""
    signal = signal / np.max(np.abs(signal))
    noisy = signal + rng.uniform(0.005, 0.02) * rng.standard_normal(len(signal))
    return (rng.uniform(0.3, 0.9) / np.max(np.abs(noisy)) * noisy).astype(np.float32)


def _pick(rng: np.random.Generator, choices: list[str]) -> str:
    return choices[int(rng.integers(len(choices)))]


def _resonance(frequency: float, bandwidth: float, delay: np.ndarray) -> np.ndarray:
    """Frequency response of a two-pole resonator with unit gain at 0 Hz (Klatt 1980, eq. 2) at
    the points ``delay = exp(-i omega)``: (F,) complex."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    c = 2.0 * r * np.cos(2.0 * np.pi * frequency / SAMPLE_RATE)
    return (1.0 - c + r * r) / (1.0 - c * delay + r * r * delay**2)


def _vowel(rng: np.random.Generator, vowel: str, f0: float, seconds: float) -> np.ndarray:
    """A formant-synthesised vowel of ``seconds`` at fundamental ``f0`` Hz: (S,), peak 1.

    Source: one pulse per glottal period (f0 with a 5 Hz, ±1.5 % vibrato) through a double pole at
    0.97 (-12 dB/octave); filter: the vowel's three resonators, formants jittered by up to ±6 %;
    radiation: a first difference (+6 dB/octave). The filters are applied in the frequency domain
    with 0.1 s of zero padding, more than their impulse responses need to die out.
    """
    n = _samples(seconds)
    t = np.arange(n) / SAMPLE_RATE  # (S,)
    pitch = f0 * (1.0 + 0.015 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 2 * np.pi)))  # (S,)
    phase = np.cumsum(pitch) / SAMPLE_RATE + rng.uniform()  # (S,) periods elapsed
    pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0]))  # (S,) 1 at each period start
    size = 1 << int(np.ceil(np.log2(n + _samples(0.1))))
    delay = np.exp(-2j * np.pi * np.fft.rfftfreq(size))  # (size // 2 + 1,)
    response = (1.0 - delay) / (1.0 - 0.97 * delay) ** 2
    for formant, bandwidth in zip(FORMANTS[vowel], FORMANT_BANDWIDTHS):
        response = response * _resonance(formant * rng.uniform(0.94, 1.06), bandwidth, delay)
    voiced = np.fft.irfft(np.fft.rfft(pulses, size) * response, size)[:n]  # (S,)
    return _ramped(voiced / np.max(np.abs(voiced)), ramp=0.02)


# --- question types: (rng, duration) -> (audio (N,) float32, question, choices, answer) ---------


def beep_count(rng: np.random.Generator, duration: float) -> Clip:
    """One to three beeps of one random frequency (300-2000 Hz), each 6-15 % of the clip, at least
    8 % of the clip apart."""
    choices = ["one", "two", "three"]
    answer = _pick(rng, choices)
    frequency = rng.uniform(300.0, 2000.0)
    lengths = list(rng.uniform(0.06, 0.15, size=choices.index(answer) + 1) * duration)
    onsets = _onsets(rng, lengths, duration, min_gap=0.08 * duration)
    audio = _mix(duration, [(onset, _tone(frequency, length)) for onset, length in zip(onsets, lengths)])
    return _finish(rng, audio), "How many beeps are there?", choices, answer


def longer_beep(rng: np.random.Generator, duration: float) -> Clip:
    """Two beeps of one frequency; the longer one lasts 2-3 times the shorter (6-12 % of the clip)."""
    choices = ["first", "second"]
    answer = _pick(rng, choices)
    frequency = rng.uniform(300.0, 2000.0)
    short = rng.uniform(0.06, 0.12) * duration
    long = short * rng.uniform(2.0, 3.0)
    lengths = [long, short] if answer == "first" else [short, long]
    onsets = _onsets(rng, lengths, duration, min_gap=0.08 * duration)
    audio = _mix(duration, [(onset, _tone(frequency, length)) for onset, length in zip(onsets, lengths)])
    return _finish(rng, audio), "Which beep is longer?", choices, answer


def louder_beep(rng: np.random.Generator, duration: float) -> Clip:
    """Two beeps of one frequency, each 10-20 % of the clip; the louder one is 6-12 dB above."""
    choices = ["first", "second"]
    answer = _pick(rng, choices)
    frequency = rng.uniform(300.0, 2000.0)
    lengths = list(rng.uniform(0.1, 0.2, size=2) * duration)
    quiet = 10.0 ** (-rng.uniform(6.0, 12.0) / 20.0)
    gains = [1.0, quiet] if answer == "first" else [quiet, 1.0]
    onsets = _onsets(rng, lengths, duration, min_gap=0.08 * duration)
    audio = _mix(duration, [(onset, gain * _tone(frequency, length)) for onset, length, gain in zip(onsets, lengths, gains)])
    return _finish(rng, audio), "Which beep is louder?", choices, answer


def note_interval(rng: np.random.Generator, duration: float) -> Clip:
    """Two notes, one in each half of the clip, 2-7 semitones apart; base pitch G3 to G5."""
    choices = ["higher", "lower"]
    answer = _pick(rng, choices)
    first = rng.uniform(55.0, 79.0)
    second = first + rng.integers(2, 8) * (1 if answer == "higher" else -1)
    parts = [(half * duration / 2 + rng.uniform(0.01, 0.05) * duration, _tone(_midi_hz(note), rng.uniform(0.35, 0.43) * duration, partials=4))
             for half, note in enumerate([first, second])]
    return _finish(rng, _mix(duration, parts)), "Is the second note higher or lower than the first?", choices, answer


def melody_direction(rng: np.random.Generator, duration: float) -> Clip:
    """Three notes, one in each third of the clip, each step 2-4 semitones the same way; the
    middle note lies in G3 to G5."""
    choices = ["up", "down"]
    answer = _pick(rng, choices)
    sign = 1 if answer == "up" else -1
    middle = rng.uniform(55.0, 79.0)
    notes = [middle - sign * rng.integers(2, 5), middle, middle + sign * rng.integers(2, 5)]
    parts = [(third * duration / 3 + rng.uniform(0.01, 0.03) * duration, _tone(_midi_hz(note), rng.uniform(0.26, 0.29) * duration, partials=4))
             for third, note in enumerate(notes)]
    return _finish(rng, _mix(duration, parts)), "Is the melody going up or down?", choices, answer


def chord_quality(rng: np.random.Generator, duration: float) -> Clip:
    """A root-position triad (root, major or minor third, fifth) lasting 60-90 % of the clip;
    root C3 to G4."""
    choices = ["major", "minor"]
    answer = _pick(rng, choices)
    root = rng.uniform(48.0, 67.0)
    length = rng.uniform(0.6, 0.9) * duration
    notes = [root, root + (4 if answer == "major" else 3), root + 7]
    chord = sum(_tone(_midi_hz(note), length, partials=4) for note in notes)
    onset = rng.uniform(0.0, duration - length - 0.01 * duration)
    return _finish(rng, _mix(duration, [(onset, chord)])), "Is the chord major or minor?", choices, answer


def vowel_identity(rng: np.random.Generator, duration: float) -> Clip:
    """One vowel (a, i or u) at f0 90-220 Hz lasting 50-80 % of the clip."""
    choices = ["a", "i", "u"]
    answer = _pick(rng, choices)
    length = rng.uniform(0.5, 0.8) * duration
    voice = _vowel(rng, answer, rng.uniform(90.0, 220.0), length)
    onset = rng.uniform(0.0, duration - length - 0.01 * duration)
    return _finish(rng, _mix(duration, [(onset, voice)])), "Which vowel is spoken?", choices, answer


def voice_pitch(rng: np.random.Generator, duration: float) -> Clip:
    """A random vowel at a low (90-130 Hz) or high (180-260 Hz) f0, lasting 50-80 % of the clip."""
    choices = ["low", "high"]
    answer = _pick(rng, choices)
    f0 = rng.uniform(90.0, 130.0) if answer == "low" else rng.uniform(180.0, 260.0)
    length = rng.uniform(0.5, 0.8) * duration
    voice = _vowel(rng, _pick(rng, sorted(FORMANTS)), f0, length)
    onset = rng.uniform(0.0, duration - length - 0.01 * duration)
    return _finish(rng, _mix(duration, [(onset, voice)])), "Is the voice low or high?", choices, answer


# Name -> (category, question type), in the round-robin order of make_items.
QUESTION_TYPES: dict[str, tuple[str, QuestionFn]] = {
    "beep_count": ("sound", beep_count),
    "longer_beep": ("sound", longer_beep),
    "louder_beep": ("sound", louder_beep),
    "note_interval": ("music", note_interval),
    "melody_direction": ("music", melody_direction),
    "chord_quality": ("music", chord_quality),
    "vowel_identity": ("speech", vowel_identity),
    "voice_pitch": ("speech", voice_pitch),
}


# --- the benchmark ----------------------------------------------------------------------------


def make_items(n: int, *, split: str, seed: int = 0, duration: float = 1.0) -> list[dict[str, Any]]:
    """``n`` rows of one split (format in the module docstring), deterministic in all arguments.

    Question types are assigned round-robin in the order of :data:`QUESTION_TYPES`, shuffled,
    then generated, all from ``np.random.default_rng([seed, SPLITS.index(split)])``.

    Raises:
        ConfigError: ``n`` is not a non-negative integer, ``split`` is not "train" or "test",
            ``seed`` is not a non-negative integer, or ``duration`` is below :data:`MIN_DURATION`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"synthetic audio: n must be a non-negative integer, got {n!r}")
    if split not in SPLITS:
        raise ConfigError(f"synthetic audio: split must be one of {list(SPLITS)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"synthetic audio: seed must be a non-negative integer, got {seed!r}")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration >= MIN_DURATION:
        raise ConfigError(f"synthetic audio: duration must be at least {MIN_DURATION} seconds, got {duration!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    kinds = list(QUESTION_TYPES.values())
    order = rng.permutation(n)
    rows = []
    for position, index in enumerate(order):
        category, question_type = kinds[index % len(kinds)]
        audio, question, choices, answer = question_type(rng, float(duration))
        rows.append({"id": f"{split}-{position:05d}", "question": question, "choices": choices, "answer": answer,
                     "category": category, "audio": audio})
    return rows


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write ``audio`` (N,) in [-1, 1] as a 16-bit PCM mono WAV file: sample ``x`` is stored as
    ``round(32768 x)`` clipped to [-32768, 32767].

    Raises:
        ConfigError: ``audio`` is not 1-D, or ``sample_rate`` is not a positive integer; the
            message names the path.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ConfigError(f"{path}: expected 1-D (mono) audio, got shape {audio.shape}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ConfigError(f"{path}: sample_rate must be a positive integer, got {sample_rate!r}")
    pcm = np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``(audio, sample_rate)`` of a 16-bit PCM mono WAV file: audio (N,) float32, sample / 32768,
    in [-1, 1).

    Raises:
        ConfigError: the file cannot be read, is not a PCM WAV file, or is not 16-bit mono; the
            message names the path.
    """
    try:
        with wave.open(str(path), "rb") as source:
            channels, width, rate, frames = source.getnchannels(), source.getsampwidth(), source.getframerate(), source.getnframes()
            if channels != 1 or width != 2:
                raise ConfigError(f"{path}: expected a 16-bit mono PCM WAV file, got {8 * width}-bit with {channels} channel(s)")
            data = source.readframes(frames)
    except (wave.Error, EOFError) as err:
        raise ConfigError(f"{path}: not a PCM WAV file ({err})") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the WAV file ({err.strerror or err})") from err
    return (np.frombuffer(data, dtype="<i2") / 32768.0).astype(np.float32), rate


def write_benchmark(folder: str | Path, *, train: int, test: int, seed: int = 0, duration: float = 1.0) -> tuple[Path, Path]:
    """Write ``make_items(train, split="train")`` and ``make_items(test, split="test")`` under
    ``folder``: the clips as ``audio/<id>.wav``, the train split as ``train.jsonl`` (AVQA style:
    id, question_text, multi_choice, answer as a 0-based index, audio_path, category) and the test
    split as ``test.json`` (MMAU format: id, question, choices, answer, task, audio_id); audio
    paths are relative to ``folder``.

    Everything is written to ``<folder>.tmp`` (replacing a leftover one) and renamed to
    ``folder`` at the end, so an interrupted run never leaves a folder that looks complete.

    Returns:
        ``(train_path, test_path)``.

    Raises:
        ConfigError: ``folder`` exists and is not an empty directory, or :func:`make_items`
            refuses the arguments (``train`` and ``test`` are its ``n``).
    """
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        raise ConfigError(f"{folder}: already exists and is not an empty directory; choose a new folder")
    splits = {"train": make_items(train, split="train", seed=seed, duration=duration),
              "test": make_items(test, split="test", seed=seed, duration=duration)}
    staging = folder.with_name(folder.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "audio").mkdir(parents=True)
    for rows in splits.values():
        for row in rows:
            write_wav(staging / "audio" / f"{row['id']}.wav", row["audio"])
    train_lines = [json.dumps({"id": r["id"], "question_text": r["question"], "multi_choice": r["choices"],
                               "answer": r["choices"].index(r["answer"]), "audio_path": f"audio/{r['id']}.wav",
                               "category": r["category"]}) for r in splits["train"]]
    (staging / "train.jsonl").write_text("".join(line + "\n" for line in train_lines), encoding="utf-8")
    test_items = [{"id": r["id"], "question": r["question"], "choices": r["choices"], "answer": r["answer"],
                   "task": r["category"], "audio_id": f"audio/{r['id']}.wav"} for r in splits["test"]]
    (staging / "test.json").write_text(json.dumps(test_items, indent=1), encoding="utf-8")
    os.replace(staging, folder)
    return folder / "train.jsonl", folder / "test.json"
