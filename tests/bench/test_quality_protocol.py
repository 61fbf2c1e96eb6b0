"""bench.quality follows the CVC-ClinicDB protocol on any folder of that layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench import quality
from models import P2SAMConfig, P2SAMEngine, save_weights
from tests.finetune.helpers import TINY_SMALL, tiny_small


def _frame(folder, n, shift):
    img = np.full((48, 64, 3), 30, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10 + shift : 26 + shift, 20:40] = 255
    img[mask > 0] = (220, 120, 90)
    Image.fromarray(img).save(folder / f"{n}.png")
    Image.fromarray(mask).save(folder / f"{n}_mask.png")


@pytest.fixture(scope="module")
def fake_cvc(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvc")
    for name, numbers in {"seqA": [8, 9, 10, 11, 12], "seqB": [101, 102, 103, 104], "short": [1, 2, 3]}.items():
        (root / name).mkdir()
        for k, n in enumerate(numbers):
            _frame(root / name, n, k)
    (root / "notes").mkdir()  # a folder without frames is not a sequence
    weights = root / "tiny.pt"
    save_weights(tiny_small(), weights, "small", TINY_SMALL, {"name": "tiny"})
    return root, weights


def test_frames_sort_numerically_and_need_masks(fake_cvc):
    root, _ = fake_cvc
    (root / "seqA" / "13.png").write_bytes((root / "seqA" / "12.png").read_bytes())  # no mask: ignored
    seqs = quality.find_sequences(root)
    assert list(seqs) == ["seqA", "seqB", "short"]
    assert [f.number for f in seqs["seqA"]] == [8, 9, 10, 11, 12]
    (root / "seqA" / "13.png").unlink()


def test_prior_is_the_third_frame_and_only_frames_4_on_are_scored(fake_cvc):
    root, weights = fake_cvc
    from models import load_model

    engine = P2SAMEngine(load_model(weights).sam, P2SAMConfig(pos_range=(1, 2), neg_range=(1, 2)))
    frames = quality.sequence_frames(root / "seqA")
    res = quality.evaluate_sequence(engine, frames, oracle=True)
    assert res["frames"] == [11, 12]  # 8, 9, 10 (the prior) are predicted but not scored
    for name in quality.method_names() + ["oracle"]:
        assert len(res["dice"][name]) == 2 and all(0.0 <= d <= 1.0 for d in res["dice"][name])
    assert all(o >= p - 1e-9 for o, p in zip(res["dice"]["oracle"], res["dice"]["p2sam"]))


def test_frame_step_scores_every_kth_frame_from_the_fourth(fake_cvc):
    root, weights = fake_cvc
    from models import load_model

    engine = P2SAMEngine(load_model(weights).sam, P2SAMConfig(pos_range=(1, 1), neg_range=(1, 1)))
    frames = quality.sequence_frames(root / "seqA") + quality.sequence_frames(root / "seqB")  # 9 frames
    full = quality.evaluate_sequence(engine, frames)
    step = quality.evaluate_sequence(engine, frames, frame_step=2)
    assert full["frames"] == [11, 12, 101, 102, 103, 104] and step["frames"] == [11, 101, 103]
    for name in quality.method_names():  # the same prior, so the same Dice on the frames both score
        assert step["dice"][name] == pytest.approx([full["dice"][name][i] for i in (0, 2, 4)], abs=1e-6)


def test_mean_per_sequence_then_over_sequences():
    def seq(values, frames):
        return {"frames": list(range(frames)), "dice": {m: list(values) for m in quality.method_names()}}

    summary = quality.summarize({"a": seq([1.0, 1.0, 1.0, 0.0], 4), "b": seq([0.5], 1)})
    assert summary["p2sam_retrieval"] == pytest.approx((0.75 + 0.5) / 2)  # not the frame mean 0.7
    assert summary["p2sam_fixed"]["3"] == pytest.approx(0.625)
    assert summary["per_sequence"]["a"]["frames_scored"] == 4


def test_cli_prints_the_table_and_writes_json(fake_cvc, tmp_path, capsys):
    root, weights = fake_cvc
    out = tmp_path / "q.json"
    assert quality.main(["--data", str(root), "--weights", str(weights), "--json", str(out), "--set", "pos_range=(1,2)", "neg_range=(1,1)", "--threads", "1", "--regraf"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert "+ReGRAF" in text and "ReGRAF (T=5" in text
    assert lines[-1].startswith("p2sam_dice ")
    data = json.loads(out.read_text())
    assert set(data) >= {"direct", "persam", "p2sam_fixed", "p2sam_retrieval", "per_sequence"}
    assert set(data["p2sam_fixed"]) == {"1", "2", "3", "4", "5"}
    assert set(data["per_sequence"]) == {"seqA", "seqB"}  # "short" has nothing to score
    assert float(lines[-1].split()[1]) == pytest.approx(data["p2sam_retrieval"], abs=1e-4)
    assert 0.0 <= data["p2sam_regraf"] <= 1.0 and data["seconds_per_target"]["regraf"] > 0


def test_runs_on_disjoint_sequences_merge_into_the_whole_run(fake_cvc, tmp_path, capsys):
    root, weights = fake_cvc
    common = ["--data", str(root), "--weights", str(weights), "--set", "pos_range=(1,2)", "neg_range=(1,1)", "--threads", "1"]
    for name in ("all", "seqA", "seqB"):
        argv = common + ["--json", str(tmp_path / f"{name}.json")] + ([] if name == "all" else ["--sequences", name])
        assert quality.main(argv) == 0
    capsys.readouterr()
    assert quality.main(["--data", str(root), "--merge", str(tmp_path / "seqA.json"), str(tmp_path / "seqB.json"),
                         "--json", str(tmp_path / "merged.json")]) == 0
    merged, whole = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("merged", "all"))
    for key in ("direct", "persam", "prior_box", "p2sam_retrieval"):
        assert merged[key] == pytest.approx(whole[key])
    assert merged["chosen"] == whole["chosen"] and capsys.readouterr().out.strip().splitlines()[-1].startswith("p2sam_dice ")
    assert quality.main(["--data", str(root), "--merge", str(tmp_path / "seqA.json"), str(tmp_path / "all.json")]) == 2


def test_missing_data_skips_with_a_message(tmp_path, capsys):
    assert quality.main(["--data", str(tmp_path / "nowhere")]) == 0
    assert "skipped" in capsys.readouterr().out


def test_uncertainty_bench_one_row_per_sampler_setting(fake_cvc, tmp_path, capsys):
    from bench import uncertainty

    root, weights = fake_cvc
    out = tmp_path / "u.json"
    argv = ["--data", str(root), "--weights", str(weights), "--k", "3", "--samplers", "prompt_noise,retrieval",
            "--scale", "0.2,0.4", "--set", "pos_range=(1,2)", "--set", "neg_range=(1,1)", "--calibrate", "--json", str(out)]
    assert uncertainty.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("spearman ") and any(line.startswith("model card qc section: ") for line in lines)
    data = json.loads(out.read_text())
    assert set(data["samplers"]) == {"prompt_noise(scale=0.2)", "prompt_noise(scale=0.4)", "retrieval(tau=0.05)"}
    assert data["frames"] == 3  # seqA: 11, 12; seqB: one scored frame; "short": none


def test_compare_reference_scores_pruned_against_the_reference(fake_cvc, tmp_path, capsys):
    root, weights = fake_cvc
    out = tmp_path / "c.json"
    argv = ["--data", str(root), "--weights", str(weights), "--json", str(out), "--set", "pos_range=(1,3)", "neg_range=(1,2)",
            "--threads", "1", "--compare-reference", "--prune-k", "6"]
    assert quality.main(argv) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert lines[-1].startswith("dice_diff_points ") and lines[-2].startswith("same_choice ")
    data = json.loads(out.read_text())
    assert data["frames"] == 3 and 0.0 <= data["same_choice"] <= 1.0  # seqA 2 + seqB 1 scored frames
    assert 0.0 <= data["pruned"] <= 1.0 and data["seconds_per_target"]["pruned"] > 0
    # derived for every k = 1 .. the number of candidates (the part counts of the 1-3 x 1-2 grid that
    # fit the small fake prior: fewer than 6); keeping all of them is the reference's own choice
    derived = {int(line.split("|")[1].strip()[2:]): line for line in lines if line.startswith("| k=")}
    n = max(derived)
    assert 2 <= n <= 6 and set(derived) == set(range(1, n + 1)), derived
    assert "100.0%" in derived[n]
