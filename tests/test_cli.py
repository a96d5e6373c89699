"""End-to-end through the two console entry points, on small synthetic data."""
import json
import os

import pytest

from cloud.cli import main as cloud_main
from edge.cli import main as edge_main
from shared.data.dataset import MultimodalDataset
from shared.manifest import read_manifest, verify_files
from tests.util import synthetic_pretrain


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return root, synthetic_pretrain(root)


def test_pretrain_writes_bundle_manifest_and_edge_data(pretrained):
    root, out = pretrained
    man = read_manifest(str(out))
    verify_files(man, str(out))
    assert man["classes"] == MultimodalDataset.load(str(root / "syn.npz")).class_names
    assert list(man["input_schema"]) == ["a", "b"]
    assert len(man["input_schema"]["a"]["normalization"]["mean"]) == 3
    assert man["quality"] and len(man["quality"]["q"]) == 2
    assert abs(sum(man["quality"]["beta_qom"]) - 1.0) < 1e-6
    assert man["min_runtimes"]["onnx_opset"] == 13
    lab = MultimodalDataset.load(str(out / "edge_data" / "labeled.npz"))
    assert len(lab) == 9 and (lab.labels >= 0).all()
    assert (out / "stage1_config.yaml").read_text().count("epochs: 2") == 1


def test_finetune_pretrained_and_ablation(pretrained, capsys):
    root, out = pretrained
    for flag, name in (([], "edge"), (["--no-pretrained"], "edge_random")):
        rc = edge_main(["finetune", "--model", str(out), "--labels", str(out / "edge_data"),
                        "--out", str(root / name), "--epochs", "4", "--no-progress"] + flag)
        assert rc == 0
        m = json.loads((root / name / "metrics.json").read_text())
        assert 0.0 <= m["test"]["accuracy"] <= 1.0 and m["pretrained"] == (not flag)
        assert os.path.isfile(str(root / name / "finetuned.pt"))
    text = capsys.readouterr().out
    assert "test:       accuracy" in text and "macro-F1" in text


def test_bad_inputs_give_named_errors(pretrained, tmp_path, capsys):
    root, out = pretrained
    assert cloud_main(["pretrain", "--dataset", "nosuchset", "--out", str(tmp_path)]) == 2
    assert "nosuchset" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    assert cloud_main(["pretrain", "--dataset", str(root / "syn.npz"), "--config", str(bad), "--out",
                       str(tmp_path / "o")]) == 2
    assert "epochz" in capsys.readouterr().err
    assert edge_main(["finetune", "--model", str(out), "--labels", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "labeled.npz" in capsys.readouterr().err


def test_export_then_serve_runtime(pretrained):
    root, out = pretrained
    ft = root / "edge_export"
    assert edge_main(["finetune", "--model", str(out), "--labels", str(out / "edge_data"), "--out", str(ft),
                      "--epochs", "2", "--no-progress"]) == 0
    assert edge_main(["export", "--model", str(out), "--finetuned", str(ft)]) == 0
    from edge.runtime import Runtime
    rt = Runtime.load(str(ft))
    test = MultimodalDataset.load(str(out / "edge_data" / "test.npz"))
    res = rt.predict(dict(test.x))
    metrics = json.loads((ft / "metrics.json").read_text())
    assert abs(float((res["label"] == test.labels).mean()) - metrics["test"]["accuracy"]) < 1e-6
    assert rt.provider == "CPUExecutionProvider"
