"""`python -m grounding.evaluate`: real annotation files, hand-worked end-to-end cases, malformed input."""
import collections
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, shared_path
from common import cli
from grounding.evaluate import main


def run_module(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "grounding.evaluate", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def run_main(capsys, *args):
    code = cli.run(main, [str(a) for a in args])
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-1] if out.out.strip() else ""
    return code, (json.loads(last) if code == 0 else None), out.err


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_didemo_prior_via_module(tmp_path):
    ann = shared_path("benchmarks", "didemo", "val_data.json")
    val = json.loads(ann.read_text())
    freq = collections.Counter(tuple(t) for d in val for t in d["times"])
    prior = [list(m) for m in sorted(freq, key=lambda m: -freq[m])]
    preds = write(tmp_path / "p.json", {str(d["annotation_id"]): prior for d in val})
    r = run_module("didemo", "--annotations", ann, "--predictions", preds)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(metrics) == {"R@1", "R@5", "mIoU"}
    assert metrics["R@1"] == pytest.approx(18.6842, abs=1e-3) and metrics["mIoU"] == pytest.approx(25.2216, abs=1e-3)


def test_charades_oracle_and_overrides(tmp_path, capsys):
    ann = shared_path("benchmarks", "charades_sta", "charades_sta_test.txt")
    lines = ann.read_text().splitlines()
    preds = {str(n): [[float(ln.split()[1]), float(ln.split("##")[0].split()[2])]] for n, ln in enumerate(lines)}
    p = write(tmp_path / "p.json", preds)
    r = run_module("charades_sta", "--annotations", ann, "--predictions", p)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(m) == {f"R{k}@{t}" for k in (1, 5) for t in (0.3, 0.5, 0.7)} | {"mIoU"}
    assert all(v == 100.0 for v in m.values())  # truth past the video end is clipped on both sides
    # half the queries unanswered, NMS off through an override
    half = write(tmp_path / "half.json", {k: v for k, v in preds.items() if int(k) % 2 == 0})
    code, m, err = run_main(capsys, "charades_sta", "--annotations", ann, "--predictions", half, "charades_nms=null")
    assert code == 0 and m["R1@0.5"] == pytest.approx(50.0) and "1860 of the annotated items" in err
    code, _, err = run_main(capsys, "charades_sta", "--annotations", ann, "--predictions", half, "nms=0.4")
    assert code == 2 and "unknown keys ['nms']" in err


def test_vidstg_temporal_only_on_real_file(tmp_path, capsys):
    ann = shared_path("benchmarks", "vidstg", "test_annotations.json")
    items = json.loads(ann.read_text())
    preds, k = {}, 0
    for a in items:
        for _ in a["questions"] + a["captions"]:
            preds[str(k)] = {"sted": [a["temporal_gt"]["begin_fid"], a["temporal_gt"]["end_fid"]]}
            k += 1
    code, m, _ = run_main(capsys, "vidstg", "--annotations", ann, "--predictions", write(tmp_path / "p.json", preds))
    assert code == 0
    assert m == {"m_tIoU": 100.0, "declarative_m_tIoU": 100.0, "interrogative_m_tIoU": 100.0}


def test_vidstg_with_boxes_hand_worked(tmp_path, capsys):
    item = {"vid": "v1", "fps": 5.0, "frame_count": 10, "used_segment": {"begin_fid": 0, "end_fid": 10},
            "temporal_gt": {"begin_fid": 2, "end_fid": 6}, "width": 20, "height": 20,
            "captions": [{"description": "a cat", "type": "object", "target_id": 0}], "questions": []}
    ann = write(tmp_path / "ann.json", [item])
    boxes = write(tmp_path / "traj.json", {"v1": {"0": {str(f): [0, 0, 10, 10] for f in range(2, 6)}}})
    preds = write(tmp_path / "p.json", {"0": {"sted": [4, 8], "boxes": {"4": [0, 0, 10, 10], "5": [5, 0, 15, 10]}}})
    code, m, _ = run_main(capsys, "vidstg", "--annotations", ann, "--predictions", preds, "--boxes", boxes)
    assert code == 0
    assert m["m_tIoU"] == pytest.approx(100 / 3) and m["declarative_m_vIoU"] == pytest.approx(100 * (4 / 3) / 6)
    assert m["vIoU@0.3"] == 0.0 and m["vIoU@0.5"] == 0.0
    bad = write(tmp_path / "bad.json", {"0": {"sted": [4, 8], "boxes": {"4": [0, 0, 10, 10]}}})
    code, _, err = run_main(capsys, "vidstg", "--annotations", ann, "--predictions", bad, "--boxes", boxes)
    assert code == 2 and "['0']" in err and "frame 5" in err


def test_hcstvg_oracle(tmp_path, capsys):
    traj = [[10 + i, 10, 20, 30] for i in range(60)]
    ann = write(tmp_path / "test.json", {"clip.mp4": {"bbox": traj, "st_frame": 40, "img_num": 500,
                                                      "caption": "a man", "width": 640, "height": 360}})
    boxes = {str(40 + i): [b[0], b[1], b[0] + b[2], b[1] + b[3]] for i, b in enumerate(traj)}
    preds = write(tmp_path / "p.json", {"clip": {"sted": [40, 100], "boxes": boxes}})
    code, m, _ = run_main(capsys, "hcstvg", "--annotations", ann, "--predictions", preds)
    assert code == 0 and m == {"m_tIoU": 100.0, "m_vIoU": 100.0, "vIoU@0.3": 100.0, "vIoU@0.5": 100.0}


def _gyt_truth(root):
    root.mkdir(parents=True, exist_ok=True)
    write(root / "ground_seg.json", {"v0": [{"segment": [2, 4], "id": 0, "sentence": "cut red cube"}],
                                     "v1": [{"segment": [0, 1], "id": 0, "sentence": "open lid"}]})
    write(root / "GroundingYouTubeBox.json",
          {"v0": {str(t): {"box": [0, 0, 10, 10], "step": "cut red cube"} for t in (2, 3, 4)}, "v1": {}})
    write(root / "vid2step.json", {"v0": ["cut red cube", "background"], "v1": ["open lid", "background"]})
    write(root / "id2wh.json", {"v0": [64, 48], "v1": [64, 48]})
    return root


def test_groundingyoutube_hand_worked(tmp_path, capsys):
    truth = _gyt_truth(tmp_path / "test" / "truth")
    preds = write(tmp_path / "p.json", {"v0": {
        "2": {"step": "cut_red_cube", "score": 0.9, "point": [5, 5], "box": [0, 0, 10, 10]},
        "3": {"step": "Cut red cube", "score": 0.9, "point": [50, 5], "box": [0, 0, 10, 10]},
        "5": {"step": "cut red cube", "score": 0.95, "point": [5, 5], "box": [0, 0, 10, 10]},
        "6": {"step": "background", "score": 0.1, "point": [5, 5]}}})
    code, m, err = run_main(capsys, "groundingyoutube", "--annotations", tmp_path / "test", "--predictions", preds)
    assert code == 0, err
    # class "cut red cube": correct with a hit only at second 2, union {2,3,4,5}; v1 has no boxed second
    assert m["IoU+Point"] == pytest.approx(25.0)
    # detections: [5] (0.95, IoU 0) then [2,3] (0.9, IoU 200/300): AP 0.5 at every threshold up to 0.5
    assert all(m[f"mAP@{t}"] == pytest.approx(50.0) for t in (0.1, 0.2, 0.3, 0.4, 0.5))
    assert m["mAP@0.1:0.5"] == pytest.approx(50.0)
    assert m["pointing_game"] == pytest.approx(100 / 3)  # boxed seconds 2, 3, 4: hit, miss, no point
    # boxed seconds 2, 3, 4: right, right, no prediction; v0's pool has one action
    assert m["action_acc"] == pytest.approx(200 / 3) and m["action_chance"] == pytest.approx(100.0)
    assert "1 of the annotated items" in err  # v1 has no prediction
    # no box and no frame size: video mAP cannot use the whole frame
    (truth / "id2wh.json").unlink()
    nobox = write(tmp_path / "nobox.json", {"v0": {"2": {"step": "cut red cube", "point": [1, 1]}}})
    code, _, err = run_main(capsys, "groundingyoutube", "--annotations", truth / "ground_seg.json",
                            "--predictions", nobox)
    assert code == 2 and "['v0'][2]" in err and "id2wh" in err


def test_groundingyoutube_real_oracle(tmp_path, capsys):
    root = shared_path("benchmarks", "groundingyoutube")
    boxes = json.loads((root / "GroundingYouTubeBox.json").read_text())

    def ordered(b):  # a prediction's box must have x1 <= x2, y1 <= y2; 18 real truth boxes do not
        return [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]

    preds = {vid: {k: {"step": e["step"], "score": 1.0, "box": ordered(e["box"]),
                       "point": [(e["box"][0] + e["box"][2]) / 2, (e["box"][1] + e["box"][3]) / 2]}
                   for k, e in d.items()} for vid, d in boxes.items()}
    code, m, _ = run_main(capsys, "groundingyoutube", "--annotations", root,
                          "--predictions", write(tmp_path / "p.json", preds))
    assert code == 0
    # not exactly 100: 18 real boxes are degenerate (x2 < x1), overlapping segments share seconds
    assert 99.0 < m["IoU+Point"] <= 100.0 and 99.0 < m["pointing_game"] <= 100.0
    assert 85.0 < m["mAP@0.5"] <= m["mAP@0.1"] <= 100.0


def test_youcook_interactions_real(tmp_path, capsys):
    root = shared_path("benchmarks", "youcook_interactions")
    boxes = json.loads((root / "boxes.json").read_text())
    centre = {vid: {k: {"point": [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]} for k, b in d.items()}
              for vid, d in boxes.items()}
    code, m, _ = run_main(capsys, "youcook_interactions", "--annotations", root,
                          "--predictions", write(tmp_path / "p.json", centre))
    assert code == 0 and m == {"pointing_game": 100.0}
    corner = {vid: {k: {"point": [b[2] + 1, b[1]]} for k, b in d.items()} for vid, d in boxes.items()}
    code, m, _ = run_main(capsys, "youcook_interactions", "--annotations", root / "segments.json",
                          "--predictions", write(tmp_path / "c.json", corner))
    assert code == 0 and m == {"pointing_game": 0.0}


def test_miningyoutube_hand_worked_and_real(tmp_path, capsys):
    srt = tmp_path / "srt"
    srt.mkdir()
    (srt / "vid.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\ncrack_eggs\n")
    preds = write(tmp_path / "p.json", {"vid": {"1": {"step": "crack eggs"}, "2": {"step": "background"}}})
    code, m, _ = run_main(capsys, "miningyoutube", "--annotations", srt, "--predictions", preds)
    assert code == 0
    assert m == {"IoU": pytest.approx(50.0), "IoD": pytest.approx(75.0), "IoU_no_bg": pytest.approx(50.0),
                 "IoD_no_bg": pytest.approx(100.0)}
    real = shared_path("benchmarks", "miningyoutube", "srt")
    code, m, err = run_main(capsys, "miningyoutube", "--annotations", real, "--predictions",
                            write(tmp_path / "none.json", {}))
    assert code == 0 and m["IoU_no_bg"] == 0.0 and 0.0 < m["IoU"] < 100.0 and "250 of the annotated" in err


@pytest.mark.parametrize("benchmark,preds,needle", [
    ("didemo", [[0, 0]], "one JSON object"),
    ("didemo", {"1": [[1]]}, "['1'][0]"),
    ("didemo", {"1": [[0.5, 1]]}, "integer chunk"),
    ("didemo", {"zzz": [[0, 0]]}, "'zzz'"),
    ("didemo", {"1": [[3, 1]]}, "start 3.0 is after end 1.0"),
    ("charades_sta", {"0": [[5, "x"]]}, "['0'][0][1]: expected a number"),
    ("charades_sta", {"99999": [[0, 1]]}, "'99999'"),
    ("vidstg", {"0": {"boxes": {}}}, "['0']: expected {'sted'"),
    ("youcook_interactions", {"iqcnbNqVc7U": {"22": {"point": [1]}}}, "['iqcnbNqVc7U']['22'].point"),
    ("miningyoutube", {"-1okAudsnAc": {"ten": {"step": "x"}}}, "key 'ten' is not an integer"),
])
def test_malformed_predictions_rejected(tmp_path, capsys, benchmark, preds, needle):
    ann = {"didemo": ("didemo", "test_data.json"), "charades_sta": ("charades_sta", "charades_sta_test.txt"),
           "vidstg": ("vidstg", "test_annotations.json"), "youcook_interactions": ("youcook_interactions",),
           "miningyoutube": ("miningyoutube", "srt")}[benchmark]
    code, _, err = run_main(capsys, benchmark, "--annotations", shared_path("benchmarks", *ann),
                            "--predictions", write(tmp_path / "p.json", preds))
    assert code == 2 and err.startswith("error: ") and needle in err, err


def test_unreadable_inputs_exit_nonzero(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{oops")
    r = run_module("didemo", "--annotations", shared_path("benchmarks", "didemo", "val_data.json"),
                   "--predictions", bad)
    assert r.returncode == 2 and "not valid JSON" in r.stderr and r.stdout == ""
    r = run_module("didemo", "--annotations", tmp_path / "nope.json", "--predictions", bad)
    assert r.returncode == 2 and "not found" in r.stderr
    r = run_module("kinetics", "--annotations", "a", "--predictions", "b")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_reads_annotations_and_predictions_from_s3(s3_bucket, capsys):
    from common import fsio

    fsio.write_text_atomic(f"{s3_bucket}/ann/charades_sta_test.txt", "A 1.0 5.0##a.\nB 2.0 4.0##b.\n")
    fsio.write_text_atomic(f"{s3_bucket}/ann/Charades_v1_test.csv", "id,length\nA,10.0\nB,10.0\n")
    fsio.write_json_atomic(f"{s3_bucket}/pred.json", {"0": [[1.0, 5.0]], "1": [[6.0, 9.0]]})
    code, m, err = run_main(capsys, "charades_sta", "--annotations", f"{s3_bucket}/ann/charades_sta_test.txt",
                            "--predictions", f"{s3_bucket}/pred.json")
    assert code == 0, err
    assert m["R1@0.7"] == pytest.approx(50.0) and m["mIoU"] == pytest.approx(50.0)


def test_import_stays_light():
    code = "import sys, grounding, grounding.evaluate; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _didemo_key():
    return str(json.loads(shared_path("benchmarks", "didemo", "test_data.json").read_text())[0]["annotation_id"])


def _charades_first():
    return shared_path("benchmarks", "charades_sta", "charades_sta_test.txt").read_text().splitlines()[0].split()[0]


# impossible predictions on the real annotation files: (benchmark, annotation path parts, predictions, needle)
IMPOSSIBLE_PREDICTIONS = [
    ("didemo", ("didemo", "test_data.json"), lambda: {_didemo_key(): [[9, 9]]}, "DiDeMo chunks are 0..5"),
    ("didemo", ("didemo", "test_data.json"), lambda: {_didemo_key(): [[0, 1], [2, 6]]}, "][1]: chunk index 6"),
    ("didemo", ("didemo", "test_data.json"), lambda: {_didemo_key(): [[-1, 2]]}, "negative start"),
    ("charades_sta", ("charades_sta", "charades_sta_test.txt"), lambda: {"0": [[-3.0, 2.0]]}, "negative start"),
    ("charades_sta", ("charades_sta", "charades_sta_test.txt"), lambda: {"0": [[1.0, 2.0], [900.0, 950.0]]},
     "['0'][1]: starts at 900 s, after the end of video"),
    ("charades_sta", ("charades_sta", "charades_sta_test.txt"), lambda: {"0": [[float("nan"), 2.0]]},
     "finite number"),
    ("vidstg", ("vidstg", "test_annotations.json"), lambda: {"0": {"sted": [40, 10]}}, "start_frame <= end_frame"),
    ("vidstg", ("vidstg", "test_annotations.json"), lambda: {"0": {"sted": [-5, 10]}}, "start_frame <= end_frame"),
    ("vidstg", ("vidstg", "test_annotations.json"), lambda: {"0": {"sted": [0, 10 ** 6]}},
     "['0']: frame 999999 is outside video"),
    ("vidstg", ("vidstg", "test_annotations.json"), lambda: {"0": {"sted": [0, 5], "boxes": {"3": [9, 0, 2, 4]}}},
     "x2 < x1"),
    ("vidstg", ("vidstg", "test_annotations.json"),
     lambda: {"0": {"sted": [0, 5], "boxes": {"3": [0, 0, float("nan"), 4]}}}, "finite number"),
    ("vidstg", ("vidstg", "test_annotations.json"), lambda: {"0": {"sted": [0, 5], "boxes": {"-2": [0, 0, 1, 1]}}},
     "negative frame"),
    ("groundingyoutube", ("groundingyoutube",), lambda: {"-1okAudsnAc": {"3": {"point": [-4, 5]}}},
     "outside the frame"),
    ("groundingyoutube", ("groundingyoutube",), lambda: {"-1okAudsnAc": {"3": {"box": [5, 9, 6, 2]}}}, "y2 < y1"),
    ("groundingyoutube", ("groundingyoutube",), lambda: {"-1okAudsnAc": {"3": {"score": float("inf")}}},
     "finite number"),
    ("youcook_interactions", ("youcook_interactions",), lambda: {"iqcnbNqVc7U": {"22": {"point": [3, -1]}}},
     "['iqcnbNqVc7U']['22'].point: point [3, -1] lies outside the frame"),
    ("miningyoutube", ("miningyoutube", "srt"), lambda: {"-1okAudsnAc": {"-3": {"step": "x"}}}, "negative second"),
    ("miningyoutube", ("miningyoutube", "srt"), lambda: {"-1okAudsnAc": {"100000000": {"step": "x"}}},
     "past 24 h"),
]


@pytest.mark.parametrize("benchmark,ann,preds,needle", IMPOSSIBLE_PREDICTIONS,
                         ids=[f"{b}-{i}" for i, (b, *_) in enumerate(IMPOSSIBLE_PREDICTIONS)])
def test_impossible_predictions_refused(tmp_path, capsys, benchmark, ann, preds, needle):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(preds()))  # NaN and Infinity as JSON writes them: Python's json reads them back
    code, _, err = run_main(capsys, benchmark, "--annotations", shared_path("benchmarks", *ann), "--predictions", p)
    assert code == 2 and err.startswith("error: ") and str(p) in err and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_didemo_nine_nine_refused_by_the_command(tmp_path):
    """The issue's case, as a user runs it."""
    p = write(tmp_path / "p.json", {_didemo_key(): [[9, 9]]})
    r = run_module("didemo", "--annotations", shared_path("benchmarks", "didemo", "test_data.json"),
                   "--predictions", p)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and f"{p} [{_didemo_key()!r}][0]" in r.stderr


def _vidstg_item(**over):
    item = {"vid": "v1", "fps": 5.0, "frame_count": 10, "used_segment": {"begin_fid": 0, "end_fid": 10},
            "temporal_gt": {"begin_fid": 2, "end_fid": 6}, "captions": [{"description": "a cat", "target_id": 0}],
            "questions": []}
    for k, v in over.items():
        item[k] = v
    return [item]


def _gyt(segment=(2, 4), box=(0, 0, 10, 10), second="3", wh=(64, 48)):
    return {"ground_seg.json": {"v0": [{"segment": list(segment), "sentence": "cut"}]},
            "GroundingYouTubeBox.json": {"v0": {second: {"box": list(box), "step": "cut"}}},
            "id2wh.json": {"v0": list(wh)}}


# impossible annotations, hand-written: (benchmark, files, needle); the first file is --annotations
IMPOSSIBLE_ANNOTATIONS = [
    ("didemo", {"a.json": [{"annotation_id": 1, "times": [[2, 7]]}]}, "outside 0 <= s <= e <= 5"),
    ("charades_sta", {"charades_sta_test.txt": "A -2.0 5.0##a.\n", "Charades_v1_test.csv": "id,length\nA,10\n"},
     "line 0: need 0 <= start <= end"),
    ("charades_sta", {"charades_sta_test.txt": "A 6.0 5.0##a.\n", "Charades_v1_test.csv": "id,length\nA,10\n"},
     "line 0: need 0 <= start <= end"),
    ("charades_sta", {"charades_sta_test.txt": "A 1.0 5.0##a.\n", "Charades_v1_test.csv": "id,length\nA,nan\n"},
     "row 1 (id 'A'): length 'nan' is not a positive"),
    ("vidstg", {"a.json": _vidstg_item(fps=0)}, "fps must be a positive"),
    ("vidstg", {"a.json": _vidstg_item(temporal_gt={"begin_fid": 6, "end_fid": 2})}, "tube [6, 2)"),
    ("vidstg", {"a.json": _vidstg_item(used_segment={"begin_fid": 0, "end_fid": 40})}, "past the video's 10 frames"),
    ("hcstvg", {"a.json": {"c.mp4": {"bbox": [[1, 1, -5, 3]], "st_frame": 2, "img_num": 40}}},
     "negative width or height"),
    ("hcstvg", {"a.json": {"c.mp4": {"bbox": [[1, 1, 5, 3]], "st_frame": 60, "img_num": 40}}},
     "past the video's 40 frames"),
    ("groundingyoutube", _gyt(segment=(5, 2)), "need 0 <= start <= end"),
    ("groundingyoutube", _gyt(second="-3"), "negative second"),
    ("groundingyoutube", _gyt(box=(0, 0, float("nan"), 3)), "finite number"),
    ("groundingyoutube", _gyt(wh=(0, 48)), "is not [width, height]"),
    ("youcook_interactions", {"segments.json": [["v", 9, 3]], "boxes.json": {"v": {"4": [0, 0, 1, 1]}}},
     "segments.json[0]: need whole seconds 0 <= start <= end"),
    ("youcook_interactions", {"segments.json": [["v", "x", 3]], "boxes.json": {}}, "expected a number"),
    ("miningyoutube", {"v.srt": "1\n00:00:05,000 --> 00:00:03,000\ncrack_eggs\n"}, "ends before it starts"),
]


@pytest.mark.parametrize("benchmark,files,needle", IMPOSSIBLE_ANNOTATIONS,
                         ids=[f"{b}-{i}" for i, (b, *_) in enumerate(IMPOSSIBLE_ANNOTATIONS)])
def test_impossible_annotations_refused(tmp_path, capsys, benchmark, files, needle):
    paths = []
    for name, content in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_text(content if isinstance(content, str) else json.dumps(content))
    ann = tmp_path if benchmark == "miningyoutube" else paths[0]
    code, _, err = run_main(capsys, benchmark, "--annotations", ann, "--predictions", write(tmp_path / "p.json", {}))
    assert code == 2 and err.startswith("error: ") and str(tmp_path) in err and needle in err, err


@pytest.mark.parametrize("override,needle", [("charades_nms=3", "charades_nms"), ("stvg_fps=0", "stvg_fps"),
                                             ("viou_thresholds=[0.3,1.5]", "viou_thresholds"),
                                             ("charades_recalls=[0]", "charades_recalls"),
                                             ("map_thresholds=[]", "map_thresholds")])
def test_out_of_range_config_refused(tmp_path, capsys, override, needle):
    code, _, err = run_main(capsys, "didemo", "--annotations", shared_path("benchmarks", "didemo", "test_data.json"),
                            "--predictions", write(tmp_path / "p.json", {}), override)
    assert code == 2 and err.startswith(f"error: EvalConfig [{needle}]"), err


def test_finetune_and_demo_evaluate_in_process(tmp_path, monkeypatch):
    """finetune.predict.evaluate and cluster.demo._evaluate call grounding.evaluate's function: same percent
    metrics as the CLI prints, no process started, and impossible predictions raise the evaluator's InputError."""
    import subprocess as sp

    from cluster import demo
    from finetune import predict as P
    from grounding.readers import InputError

    ann = shared_path("benchmarks", "didemo", "test_data.json")
    key = _didemo_key()
    preds = write(tmp_path / "p.json", {key: [[0, 0], [1, 1]]})
    cli_run = run_module("didemo", "--annotations", ann, "--predictions", preds)
    expected = json.loads(cli_run.stdout.strip().splitlines()[-1])
    gyt = _gyt_truth(tmp_path / "gyt")
    gpreds = write(tmp_path / "g.json", {"v0": {"2": {"step": "cut red cube", "point": [5, 5], "box": [0, 0, 9, 9]}}})
    gyt_cli = json.loads(run_module("groundingyoutube", "--annotations", gyt, "--predictions", gpreds)
                         .stdout.strip().splitlines()[-1])

    def no_process(*a, **k):
        raise AssertionError(f"a process was started: {a[:1]}")

    monkeypatch.setattr(sp, "Popen", no_process)
    monkeypatch.setattr(sp, "run", no_process)
    metrics, counts = P.evaluate("didemo", {"annotations": str(ann)}, str(preds))
    assert metrics == expected and counts["missing_predictions"] == counts["queries"] - 1
    assert demo._evaluate(str(gyt), str(gpreds)) == gyt_cli
    with pytest.raises(InputError, match="DiDeMo chunks are 0..5"):
        P.evaluate("didemo", {"annotations": str(ann)}, str(write(tmp_path / "bad.json", {key: [[9, 9]]})))
