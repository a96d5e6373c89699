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


def test_finetune_learns_from_the_unlabeled_windows(pretrained, tmp_path, capsys):
    root, out = pretrained
    unl = MultimodalDataset.load(str(out / "edge_data" / "unlabeled.npz"))
    assert len(unl) > 0 and (unl.labels == -1).all()
    rc = edge_main(["finetune", "--model", str(out), "--labels", str(out / "edge_data"), "--out", str(tmp_path / "u"),
                    "--epochs", "4", "--no-progress", "--unlabeled-weight", "1", "--threshold", "0.5",
                    "--modality-dropout", "0.3"])
    assert rc == 0
    m = json.loads((tmp_path / "u" / "metrics.json").read_text())
    assert m["unlabeled_windows"] == len(unl) and m["config"]["unlabeled_weight"] == 1.0
    assert all(0.0 <= h["pseudo_labeled"] <= 1.0 for h in m["history"])
    assert "+ {} unlabeled".format(len(unl)) in capsys.readouterr().out
    # windows of another schema are refused by name, before any training
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("labeled", "val"):
        MultimodalDataset.load(str(out / "edge_data" / (name + ".npz"))).save(str(labels / name))
    unl.select_modalities(["a"]).save(str(labels / "unlabeled"))
    assert edge_main(["finetune", "--model", str(out), "--labels", str(labels), "--out", str(tmp_path / "v"),
                      "--epochs", "1", "--no-progress", "--unlabeled-weight", "1"]) == 2
    err = capsys.readouterr().err
    assert "unlabeled.npz" in err and "Traceback" not in err


def test_unlabeled_windows_join_the_labels_folder_and_the_devices_own(pretrained, tmp_path):
    import numpy as np

    from edge.finetune import unlabeled_windows
    from shared.errors import DataError
    root, out = pretrained
    man = read_manifest(str(out))
    unl = MultimodalDataset.load(str(out / "edge_data" / "unlabeled.npz"))
    own = {m: a[:5] for m, a in unl.x.items()}  # what `--personal-windows` keeps: modality -> [N, T, C]
    both = unlabeled_windows(man, str(out / "edge_data"), own)
    assert len(both) == len(unl) + 5 and (both.labels == -1).all()
    assert np.array_equal(both.x["a"][-5:], own["a"])
    assert len(unlabeled_windows(man, str(tmp_path), own)) == 5
    assert unlabeled_windows(man, str(tmp_path), {}) is None
    with pytest.raises(DataError, match="this device's stored windows"):
        unlabeled_windows(man, str(tmp_path), {"a": own["a"][:, :7]})


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
