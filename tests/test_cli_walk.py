"""Both CLIs as an operator meets them: every subcommand answers --help, and bad invocations end with a
non-zero exit and a one-line message naming the thing at fault, never a traceback. (No daemon runs here:
the address 127.0.0.1:1 refuses connections at once.)"""
import argparse

import pytest

from cloud.cli import build_parser as cloud_parser
from cloud.cli import main as cloud_main
from edge.cli import build_parser as edge_parser
from edge.cli import main as edge_main

DOWN = "127.0.0.1:1"


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield prefix + (name,)
                yield from _subcommands(sp, prefix + (name,))


@pytest.mark.parametrize("main, parser", [(cloud_main, cloud_parser), (edge_main, edge_parser)])
def test_every_subcommand_has_help(main, parser, capsys):
    subs = list(_subcommands(parser()))
    assert len(subs) >= 10
    for sub in subs:
        args = list(sub)
        if sub[0] == "registry" and len(sub) > 1:
            args = ["registry", "--data-dir", "/tmp"] + list(sub[1:])
        with pytest.raises(SystemExit) as e:
            main(args + ["--help"])
        assert e.value.code == 0, sub
        assert "usage:" in capsys.readouterr().out


def _bad(tmp_path):
    d, missing = str(tmp_path), str(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{")
    cloud = [
        (["serve", "--data-dir", d, "--listen", "nope"], "--listen"),
        (["serve", "--data-dir", d, "--metrics-listen", "localhost"], "--metrics-listen"),
        (["serve", "--data-dir", d, "--listen", "0.0.0.0:0"], "--insecure"),
        (["serve", "--data-dir", d, "--token-file", missing], "--token-file"),
        (["serve", "--data-dir", d, "--tls-cert", missing, "--tls-key", missing], "--tls-key"),
        (["serve", "--data-dir", d, "--datasets-dir", missing], "--datasets-dir"),
        (["serve", "--data-dir", d, "--max-rpcs", "0"], "--max-rpcs"),
        (["serve", "--data-dir", d, "--keepalive-s", "x"], "--keepalive-s"),
        (["submit", "pretrain", "--server", DOWN], "UNAVAILABLE"),
        (["submit", "pretrain", "--server", DOWN, "--config-json", "{"], "--config-json"),
        (["submit", "pretrain", "--server", DOWN, "--token-file", missing], "--token-file"),
        (["submit", "pretrain", "--server", DOWN, "--tls-ca", missing], "--tls-ca"),
        (["job", "abcd", "--server", DOWN], "UNAVAILABLE"),
        (["jobs", "--server", DOWN, "--limit", "0"], "--limit"),
        (["models", "--server", DOWN], "UNAVAILABLE"),
        (["quality", "--model", missing], missing),
        (["pretrain", "--dataset", "nope", "--out", d], "nope"),
        (["registry", "--data-dir", missing, "list"], "--data-dir"),
        (["align", "--out", d, "--epochs", "0"], "epochs"),
        (["cross-modal", "--stage1", missing], missing),
    ]
    edge = [
        (["serve", "--state-dir", d, "--listen", "0.0.0.0:0"], "--insecure"),
        (["serve", "--state-dir", d, "--listen-token-file", missing], "--listen-token-file"),
        (["serve", "--state-dir", d, "--metrics-listen", "127.0.0.1:70000"], "--metrics-listen"),
        (["serve", "--state-dir", d, "--max-streams", "0"], "--max-streams"),
        (["personalize", "--state-dir", d, "--labels", missing], "--labels"),
        (["personalize", "--state-dir", d, "--labels", d, "--gate", "often"], "--gate"),
        (["run", "--state-dir", d, "--cloud", DOWN, "--labels", d, "--watts", "0"], "--watts"),
        (["run", "--state-dir", d, "--cloud", DOWN, "--labels", d, "--config", missing], "--config"),
        (["pull", "--state-dir", d, "--cloud", DOWN, "--token-file", missing], "--token-file"),
        (["predict", "--server", DOWN, "--windows", missing], missing),
        (["predict", "--server", DOWN, "--windows", d + "/w.npz", "--batch", "0"], "--batch"),
        (["search", "--server", DOWN, "--text", "walking"], "UNAVAILABLE"),
        (["info", "--state-dir", missing], "--state-dir"),
        (["info", "--state-dir", d, "--name", "wrong"], "--name wrong"),
        (["rollback", "--state-dir", d], "roll back"),
        (["export", "--model", missing, "--finetuned", d], missing),
        (["finetune", "--model", missing, "--labels", d, "--out", d], missing),
        (["labels", "--dataset", "nope", "--out", d], "nope"),
        (["labels", "--dataset", "synthetic", "--out", d, "--label-rate", "2"], "--label-rate"),
    ]
    return cloud, edge


def test_bad_invocations_fail_in_one_line(tmp_path, capsys):
    cloud, edge = _bad(tmp_path)
    for main, cases, prog in ((cloud_main, cloud, "cloud-server"), (edge_main, edge, "edge-agent")):
        for args, named in cases:
            try:
                rc = main(args)
            except SystemExit as e:  # argparse's own errors (usage line + one error line)
                rc = e.code
            out = capsys.readouterr()
            err = out.err.strip().splitlines()
            assert rc not in (0, None), (args, out)
            assert err and "Traceback" not in out.err, (args, out.err)
            assert err[-1].startswith(prog) and named in err[-1], (args, err[-1])
