"""The report of a comparison: Pareto verdicts and hypervolumes wired from hand-made results
(every expected number derived in a comment), the fronts plot, a (colour, marker) per label
that never repeats, the image grid read back pixel by pixel, and one tiny digits sweep that
writes samples, grid, fronts and verdicts."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adrpo.core.pareto import family_hypervolume, reference_point
from adrpo.experiments.engine import run_experiment
from adrpo.experiments.front_plots import plot_styles
from adrpo.experiments.fronts import BASE_LABEL, named, objective_pairs, pareto_analysis
from adrpo.experiments.grids import SAMPLES_FILE, compose_grid, select_rows
from adrpo.experiments.report import write_report
from adrpo.experiments.spec import ExperimentSpec
from adrpo.tasks.digits import HELD_OUT
from conftest import TINY_SETTINGS

# The front of every seed: base (0.5, 2.5), ORW (a=1) (0.6, 2.0), ORW (a=0.1) (0.8, 1.0) on
# (reward, diversity); on (reward, w2) the same rewards with w2 0, 0.1, 0.3 (all non-dominated).
BASE = {"reward": 0.5, "diversity": 2.5, "w2": 0.0}
SEEDS = [0, 1, 2]
JITTER = (0.0, 0.1, -0.1)  # per-seed offsets of a diversity


def run(label: str, family: str, role: str, seed: int, final: dict, **extra) -> dict:
    return {"label": label, "family": family, "role": role, "seed": seed, "config_hash": "0" * 8, "directory": "",
            "config": {}, "trajectory": [{"step": 0, **BASE}, {"step": 10, **final}], "alarms": [], "train_log": None,
            "samples": None, "target_step": 10, **extra}


def sweep_results() -> dict:
    runs = []
    for seed in SEEDS:
        d = JITTER[seed]
        runs += [
            run("ORW (a=1)", "ORW", "baseline", seed, {"reward": 0.6, "diversity": 2.0, "w2": 0.1}),
            run("ORW (a=0.1)", "ORW", "baseline", seed, {"reward": 0.8, "diversity": 1.0, "w2": 0.3}),
            run("ADRPO (beta0=1)", "ADRPO", "adaptive", seed, {"reward": 0.7, "diversity": 2.0 + d, "w2": 0.1}),
            run("ADRPO (beta0=0.1)", "ADRPO", "adaptive", seed, {"reward": 0.7, "diversity": 1.2 + d / 2, "w2": 0.25}),
            run("ADRPO (beta0=10)", "ADRPO", "adaptive", seed, {"reward": 0.9, "diversity": 0.5, "w2": 0.5}),
            # RAFT dominates everything; as role "other" it must not enter the front
            run("RAFT", "RAFT", "other", seed, {"reward": 0.95, "diversity": 3.0, "w2": 0.0}),
        ]
        if seed != 2:  # a failed run: seed 2 missing
            runs.append(run("ORW (a=10)", "ORW", "baseline", seed, {"reward": 0.99, "diversity": 2.9, "w2": 0.0}))
    return {"spec": {"task": "digits", "seeds": SEEDS}, "runs": runs}


def records(analysis) -> dict[tuple[str, str], object]:
    return {(r.label, r.metric): r for r in analysis.comparisons}


def test_verdicts_wire_each_adaptive_point_against_the_union_of_baselines():
    points, (diversity, divergence) = pareto_analysis(sweep_results(), "flow")
    assert points.seeds == SEEDS and "ORW (a=10)" not in points.configurations
    assert any("'ORW (a=10)' lacks seed(s) [2]" in note for note in points.notes)
    assert diversity.baseline == ["ORW (a=1)", "ORW (a=0.1)"]
    got = records(diversity)

    # ADRPO (beta0=1) at reward 0.7: the front's diversity there is halfway from 2.0 to 1.0 = 1.5,
    # so ΔD = 2.0 + jitter − 1.5 = 0.5, 0.6, 0.4: mean 0.5, std 0.1, 2 SE = 0.115 < 0.5.
    beyond = got["ADRPO (beta0=1)", "diversity"]
    assert beyond.at == "reward" and beyond.verdict == "beyond" and beyond.n_in_range == 3
    assert beyond.delta_mean == pytest.approx(0.5) and beyond.delta_std == pytest.approx(0.1)
    assert [beyond.per_seed[s] for s in SEEDS] == pytest.approx([0.5, 0.6, 0.4])
    # ΔR at equal diversity: at 2.0 the front has reward 0.6 (ΔR 0.1); at 2.1, on the edge to
    # the base (2.5, 0.5): 0.6 − 0.1·0.2 = 0.58 (ΔR 0.12); at 1.9, on the edge to (1.0, 0.8):
    # 0.6 + 0.1·0.2 = 0.62 (ΔR 0.08).
    assert [got["ADRPO (beta0=1)", "reward"].per_seed[s] for s in SEEDS] == pytest.approx([0.1, 0.12, 0.08])
    # ADRPO (beta0=0.1): diversity 1.2, 1.25, 1.15 against 1.5: ΔD = −0.3, −0.25, −0.35.
    behind = got["ADRPO (beta0=0.1)", "diversity"]
    assert behind.verdict == "behind" and behind.delta_mean == pytest.approx(-0.3)
    # ADRPO (beta0=10): reward 0.9 lies past the front's 0.8, diversity 0.5 below its 1.0.
    for metric in ("diversity", "reward"):
        far = got["ADRPO (beta0=10)", metric]
        assert far.verdict == "out of range" and far.n_in_range == 0 and math.isnan(far.delta_mean)

    # (reward ↑, w2 ↓): the front's w2 at reward 0.7 is 0.2, so Δw2 = 0.2 − 0.1 = 0.1 (less
    # divergence is better) for beta0=1 and 0.2 − 0.25 = −0.05 for beta0=0.1, on every seed.
    assert divergence.objective == objective_pairs("flow")[1] and divergence.objective.y == "w2"
    got = records(divergence)
    assert got["ADRPO (beta0=1)", "w2"].delta_mean == pytest.approx(0.1) and got["ADRPO (beta0=1)", "w2"].verdict == "beyond"
    assert got["ADRPO (beta0=0.1)", "w2"].delta_mean == pytest.approx(-0.05) and got["ADRPO (beta0=0.1)", "w2"].verdict == "behind"
    # ΔR at equal w2 0.1: the front has reward 0.6 there.
    assert got["ADRPO (beta0=1)", "reward"].delta_mean == pytest.approx(0.1)


def test_moving_reference_runs_leave_the_w2_pair_but_stay_on_diversity_and_kl():
    """A flow run's evaluated W2 is to its trainer's current reference: with a moving reference it is
    not a distance to the base model, so such runs must not enter (reward, W2) fronts or verdicts. The
    LLM evaluation's KL is to the base model, so there they stay."""
    results = sweep_results()
    for seed in SEEDS:  # a moving-reference ORW with a tiny W2 to its own moving reference
        results["runs"].append(run("ORW moving", "ORW moving", "baseline", seed, {"reward": 0.75, "diversity": 1.9, "w2": 0.001},
                                   config={"sync_ref_model": True}))
    points, (diversity, divergence) = pareto_analysis(results, "flow")
    assert "ORW moving" in diversity.baseline and "ORW moving" not in divergence.labels
    assert any("'ORW moving' has a moving reference" in note for note in divergence.notes)
    assert records(divergence)["ADRPO (beta0=1)", "w2"].delta_mean == pytest.approx(0.1)  # the front without it
    _, (_, kl_pair) = pareto_analysis({**results, "runs": [
        {**r, "trajectory": [{**p, "kl": p["w2"]} for p in r["trajectory"]]} for r in results["runs"]]}, "llm")
    assert "ORW moving" in kl_pair.labels


def test_hypervolumes_use_one_shared_reference_and_match_core_pareto():
    points, (diversity, _) = pareto_analysis(sweep_results(), "flow")
    # Worst reward over every run and the base: 0.5 (base); worst diversity: 0.5 (beta0=10).
    assert diversity.reference == pytest.approx((0.5, 0.5))
    hv = {h.family: h for h in diversity.hypervolumes}
    assert list(hv) == ["ORW", "ADRPO", "RAFT"]
    # ORW per seed, swept from the largest reward: (0.8 − 0.5)·(1.0 − 0.5) = 0.15, then
    # (0.6 − 0.5)·(2.0 − 1.0) = 0.1; the base sits on the reward edge and adds nothing.
    assert hv["ORW"].mean == pytest.approx(0.25) and (hv["ORW"].low, hv["ORW"].high) == pytest.approx((0.25, 0.25))
    families = {family: {label: points.configurations[label] for label in labels} for family, labels in points.families.items()}
    pick = {"x": "reward", "y": "diversity", "maximize": (True, True)}
    reference = reference_point(families.values(), base=points.base, **pick)
    assert reference == diversity.reference
    for family, members in families.items():
        expected = family_hypervolume(members, name=family, base=points.base, reference=reference, **pick)
        assert hv[family].to_dict() == expected.to_dict()


def test_write_report_writes_verdicts_fronts_and_pareto_json(tmp_path):
    paths = write_report(sweep_results(), tmp_path)
    assert set(paths) == {"table", "json", "plot", "fronts", "verdicts"}  # no samples: no grid
    verdicts = paths["verdicts"].read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in verdicts.splitlines() if line.startswith("| ADRPO (")}
    assert len([line for line in verdicts.splitlines() if line.startswith("| ADRPO (")]) == 6  # 3 configurations × 2 pairs
    first_pair = verdicts.split("### ")[1]
    assert "| ADRPO (beta0=1) | 0.5 ± 0.1 | 3/3 | beyond | 0.1 ± 0.02 | 3/3 | beyond |" in first_pair
    assert "| ADRPO (beta0=10) | — | 0/3 | out of range | — | 0/3 | out of range |" in first_pair
    assert "| ORW | baseline | 0.25 ± 0 | [0.25, 0.25] |" in first_pair
    assert "behind" in rows["ADRPO (beta0=0.1)"] and "'ORW (a=10)' lacks seed(s) [2]" in verdicts
    assert paths["table"].read_text().endswith(verdicts)  # the sweep's table ends with the verdicts

    pareto = json.loads(paths["json"].read_text())["pareto"]
    assert "Student-t" in pareto["rule"] and "strict majority" in pareto["rule"] and pareto["seeds"] == SEEDS
    diversity, divergence = pareto["pairs"]
    assert (diversity["y"], divergence["y"], divergence["maximize"]) == ("diversity", "w2", [True, False])
    assert diversity["front"] == ["ORW (a=1)", "ORW (a=0.1)", BASE_LABEL]
    first = diversity["comparisons"][0]
    assert (first["label"], first["metric"], first["verdict"]) == ("ADRPO (beta0=1)", "diversity", "beyond")
    assert first["delta_mean"] == pytest.approx(0.5) and diversity["comparisons"][-1]["delta_mean"] is None  # NaN -> null
    assert diversity["hypervolumes"][0]["family"] == "ORW" and diversity["hypervolumes"][0]["mean"] == pytest.approx(0.25)

    png = paths["fronts"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = np.asarray(Image.open(paths["fronts"]))
    assert pixels.shape[:2] == (696, 1800)  # two 7.5 × 5.8 in panels at 120 dpi
    assert (pixels[..., :3] < 30).all(axis=-1).sum() > 100  # the black base points, axes and text are drawn


def test_no_fronts_without_both_an_adaptive_and_a_baseline_configuration(tmp_path):
    results = sweep_results()
    results["runs"] = [r for r in results["runs"] if r["role"] != "baseline"]
    paths = write_report(results, tmp_path)
    assert set(paths) == {"table", "json", "plot"} and not (tmp_path / "verdicts.md").exists()
    assert "Pareto" not in paths["table"].read_text()
    assert "skipped" in json.loads(paths["json"].read_text())["pareto"]


def test_llm_results_compare_on_kl_and_plot_trajectories(tmp_path):
    def llm_run(label: str, role: str, seed: int, reward: float, kl: float) -> dict:
        base = {"reward": 0.2, "kl": 0.0, "entropy": 1.0, "diversity": 0.5}
        return {**run(label, label.split()[0], role, seed, {}), "target_step": 5, "trajectory": [
            {"step": 0, **base}, {"step": 5, **base, "reward": reward, "kl": kl}]}

    runs = [llm_run(label, role, seed, reward, kl) for seed in (0, 1)
            for label, role, reward, kl in (("GRPO (beta=0.1)", "baseline", 0.6, 0.2), ("ADRPO", "adaptive", 0.6, 0.1))]
    paths = write_report({"spec": {"task": "arithmetic", "seeds": [0, 1]}, "runs": runs}, tmp_path)
    assert set(paths) == {"table", "json", "plot", "fronts", "verdicts"} and paths["plot"].name == "trajectories.png"
    diversity, divergence = json.loads(paths["json"].read_text())["pareto"]["pairs"]
    assert divergence["y"] == "kl"
    # The front's KL at reward 0.6 is GRPO's 0.2: ΔKL = 0.2 − 0.1 = 0.1 on both seeds.
    gain = next(c for c in divergence["comparisons"] if c["metric"] == "kl")
    assert gain["delta_mean"] == pytest.approx(0.1) and gain["verdict"] == "beyond"
    # Diversity 0.5 everywhere: GRPO (0.6, 0.5) dominates the base, ADRPO sits on it, ΔD = 0.
    assert next(c for c in diversity["comparisons"] if c["metric"] == "diversity")["verdict"] == "on"


def test_colour_marker_pairs_never_repeat():
    for n in (25, 130):
        styles = plot_styles([f"config {i}" for i in range(n)])
        pairs = {(tuple(color), marker) for color, marker in styles.values()}
        assert len(pairs) == n
    styles = list(plot_styles([str(i) for i in range(25)]).values())
    assert len({tuple(color) for color, _ in styles[:10]}) == 10 and {marker for _, marker in styles[:10]} == {"o"}
    assert styles[10][1] != "o" and styles[20][1] not in ("o", styles[10][1])


def test_row_selection_rule():
    few = {"ADRPO": ["A1", "A2"], "ORW": ["O1", "O2"]}
    assert select_rows(few) == [BASE_LABEL, "A1", "A2", "O1", "O2"]
    sweep = {"ADRPO": [f"A{i}" for i in range(7)], "ORW": [f"O{i}" for i in range(5)]}
    assert select_rows(sweep) == [BASE_LABEL, "A0", "A3", "A6", "O0", "O2", "O4"]  # first, middle, last
    many = {f"F{f}": [f"F{f}-{i}" for i in range(5)] for f in range(6)}
    assert select_rows(many) == [BASE_LABEL] + [f"F{f}-0" for f in range(6)]  # 1 + 18 and 1 + 12 do not fit
    assert len(select_rows({f"F{f}": ["x", "y"] for f in range(20)})) == 12


PATTERN = np.arange(64).reshape(8, 8) * 3  # channel 0 of every fake digit: pixel (i, j) = 3·(8i + j)


def fake_images(tag: int, seed: int, prompts: int = 2, group: int = 2) -> torch.Tensor:
    """uint8 (B, G, 3, 8, 8): channel 0 the pixel pattern, channel 1 tag + 5b + g, channel 2 100·seed + 7."""
    images = np.zeros((prompts, group, 3, 8, 8), dtype=np.uint8)
    for b in range(prompts):
        for g in range(group):
            images[b, g, 0] = PATTERN
            images[b, g, 1] = tag + 5 * b + g
            images[b, g, 2] = 100 * seed + 7
    return torch.from_numpy(images)


def test_grid_reads_every_configurations_samples_of_the_first_seed(tmp_path):
    results = sweep_results()
    results["spec"]["seeds"] = [1, 0, 2]  # the first seed is 1
    tags = {}
    for r in results["runs"]:
        directory = tmp_path / "runs" / f"{r['label']}-{r['seed']}"
        directory.mkdir(parents=True)
        tag = tags.setdefault(r["label"], 20 * (len(tags) + 1))
        torch.save({"prompts": ["a bold zero", "a thin three"], "images": fake_images(tag, r["seed"]),
                    "base_images": fake_images(240, r["seed"])}, directory / SAMPLES_FILE)
        r.update(directory=str(directory), samples=SAMPLES_FILE)
    paths = write_report(results, tmp_path / "report")
    grid = json.loads(paths["json"].read_text())["grid"]
    labels = [BASE_LABEL, "ORW (a=1)", "ORW (a=0.1)", "ORW (a=10)", "ADRPO (beta0=1)", "ADRPO (beta0=0.1)", "ADRPO (beta0=10)", "RAFT"]
    assert grid["seed"] == 1 and grid["rows"] == labels and grid["prompts"] == ["a bold zero", "a thin three"]

    pixels = np.asarray(Image.open(paths["grid"]).convert("RGB"))
    _, layout = compose_grid([(label, fake_images(0, 0).numpy()) for label in labels], grid["prompts"])
    assert pixels.shape == (*layout.size, 3) and layout.scale == 8 and (layout.height, layout.width) == (64, 64)
    for row, label in enumerate(labels):
        tag = 240 if label == BASE_LABEL else tags[label]
        for b in range(2):
            for g in range(2):
                y, x = layout.origin(row, b, g)
                cell = pixels[y:y + 64, x:x + 64]  # (64, 64, 3)
                assert (cell[..., 1] == tag + 5 * b + g).all() and (cell[..., 2] == 107).all()  # seed 1's samples
                # nearest-neighbour upscaling: digit pixel (i, j) is the 8×8 block at (8i, 8j)
                assert (cell[..., 0] == PATTERN.repeat(8, axis=0).repeat(8, axis=1)).all()
    y, x = layout.origin(0, 0, 0)
    assert (pixels[y - 2, x:x + 64] == 255).all()  # the white ground between header and images


def digits_sweep(tmp_path: Path, cache: Path) -> ExperimentSpec:
    trainer = {"num_steps": 2, "prompts_per_step": 2, "group_size": 4, "sampling_steps": 2, "learning_rate": 1e-3,
               "checkpoint_steps": 0, "report_to": ["none"], "progress_bar": False}
    return ExperimentSpec.from_dict({
        "task": "digits", "task_args": {"settings": dict(TINY_SETTINGS), "cache": str(cache), "eval_samples": 2, "eval_sampling_steps": 2},
        "trainer": trainer, "eval": {"steps": 2}, "seeds": [0], "output_dir": str(tmp_path / "out"),
        "methods": [{"label": "ADRPO", "method": "adrpo", "grid": {"beta0": [0.5, 1.0]}},
                    {"label": "ORW", "method": "orw_cfm_w2", "grid": {"orw_alpha": [0.1, 1.0]}}],
    })


def test_a_digits_sweep_saves_samples_and_reports_grid_fronts_and_verdicts(tmp_path, digits_cache):
    results = run_experiment(digits_sweep(tmp_path, digits_cache))
    blobs = []
    for r in results["runs"]:
        assert r["samples"] == SAMPLES_FILE
        blob = torch.load(Path(r["directory"]) / SAMPLES_FILE, weights_only=True)
        assert blob["prompts"] == list(HELD_OUT)
        assert blob["images"].dtype == torch.uint8 and blob["images"].shape == (6, 2, 3, 8, 8)
        assert (blob["images"][:, :, 0] == blob["images"][:, :, 2]).all()  # grey digits
        blobs.append(blob)
    # one base model and one evaluation noise: every run's base samples are the same; training moved the policy
    assert all(torch.equal(blob["base_images"], blobs[0]["base_images"]) for blob in blobs)
    assert any(not torch.equal(blob["images"], blob["base_images"]) for blob in blobs)

    paths = write_report(results, tmp_path / "out")
    assert {"grid", "fronts", "verdicts"} <= set(paths) and all(path.is_file() for path in paths.values())
    verdicts = paths["verdicts"].read_text()
    for label in ("ADRPO (beta0=0.5)", "ADRPO (beta0=1)"):
        assert sum(line.startswith(f"| {label} |") for line in verdicts.splitlines()) == 2
    labels = [BASE_LABEL] + [r["label"] for r in results["runs"]]
    pixels = np.asarray(Image.open(paths["grid"]).convert("RGB"))
    _, layout = compose_grid([(label, blobs[0]["images"].numpy()) for label in labels], list(HELD_OUT))
    y, x = layout.origin(0, 2, 1)  # the base model's second sample of "a bold four"
    expected = blobs[0]["base_images"][2, 1].permute(1, 2, 0).numpy().repeat(8, axis=0).repeat(8, axis=1)
    assert (pixels[y:y + 64, x:x + 64] == expected).all()
    y, x = layout.origin(len(labels) - 1, 5, 0)  # the last ORW point's first "a thin nine"
    expected = blobs[-1]["images"][5, 0].permute(1, 2, 0).numpy().repeat(8, axis=0).repeat(8, axis=1)
    assert (pixels[y:y + 64, x:x + 64] == expected).all()


def test_long_lists_of_configurations_are_counted_by_family():
    """A front of a large grid is named by family (the digits-moving report listed 72 labels on one line)."""
    points = types.SimpleNamespace(families={"ORW": [f"ORW (a={i})" for i in range(18)], "ORW moving": [f"ORW moving (a={i})" for i in range(54)],
                                             "ADRPO": ["ADRPO"]})
    assert named(["ORW (a=1)", "ADRPO"], points) == "'ORW (a=1)', 'ADRPO'"
    every_orw = points.families["ORW"] + points.families["ORW moving"][:12]
    assert named(every_orw, points) == "the 18 configurations of 'ORW', 12 of the 54 configurations of 'ORW moving'"


def test_a_large_grid_plots_its_trajectories_by_family(tmp_path, monkeypatch):
    """Past LABELLED_POINTS configurations the trajectories take one colour and legend entry per family and the flow
    plot leaves out its bar panels (one unreadable bar per configuration); a small comparison keeps one entry per
    configuration and its four panels."""
    import matplotlib.axes

    from adrpo.experiments.front_plots import LABELLED_POINTS
    from adrpo.experiments.report import plot_tradeoff, plot_trajectories

    legends = []
    real_legend = matplotlib.axes.Axes.legend
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", lambda ax, *a, **k: legends.append(list(a[1]) if len(a) > 1 else None) or real_legend(ax, *a, **k))

    def results(n: int, task: str) -> dict:
        runs = [run(f"{family} (a={i})", family, role, seed, {"reward": 0.6 + i / 1000, "diversity": 2.0, "w2": 0.1})
                for family, role in (("ORW", "baseline"), ("ADRPO", "adaptive")) for i in range(n) for seed in SEEDS]
        return {"spec": {"task": task, "seeds": SEEDS}, "runs": runs}

    widths = {}
    for n in (2, LABELLED_POINTS):
        with Image.open(plot_tradeoff(results(n, "digits"), tmp_path / f"{n}.png")) as image:
            widths[n] = image.size[0]
        plot_trajectories(results(n, "arithmetic"), tmp_path / f"{n}-llm.png", keys=("reward", "diversity"))
    assert widths == {2: 20 * 120, LABELLED_POINTS: 9 * 120}  # figsize inches × dpi 120: four panels, then one
    small = ["ORW (a=0)", "ORW (a=1)", "ADRPO (a=0)", "ADRPO (a=1)"]
    assert legends == [small + [BASE_LABEL], small, ["ORW", "ADRPO", BASE_LABEL], ["ORW", "ADRPO"]]


def test_long_row_labels_wrap_instead_of_widening_the_grid():
    """A sweep's labels run to 90 characters: wrapped at LABEL_WIDTH, the label column stays narrow and the images keep
    the width (the digits-moving grid's images were a third of its width before)."""
    from adrpo.experiments.grids import LABEL_WIDTH

    long = "ORW-CFM-W2 moving ref (orw_alpha=0.03, ref_model_sync_steps=25, ref_model_mixup_alpha=0.6)"
    _, short_layout = compose_grid([("Base", fake_images(0, 0).numpy())], ["a bold zero", "a thin three"])
    image, layout = compose_grid([("Base", fake_images(0, 0).numpy()), (long, fake_images(1, 0).numpy())], ["a bold zero", "a thin three"])
    assert short_layout.left < layout.left <= short_layout.pad + LABEL_WIDTH + 8
    assert image.size == (layout.size[1], layout.size[0])
