"""Report card: sections, summary table from section metrics, plots, reset."""

import json

from nanochat import report


def test_sections_summary_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    report.reset()
    report.log_section("Base model evaluation", [{"tasks": 20}], metrics={"CORE (offline, 20 tasks)": 0.125})
    report.log_section("Chat evaluation sft", ["some text"], metrics={"ARC-Easy": 0.5, "ChatCORE": 0.25})
    hist = tmp_path / "base_checkpoints" / "d1"
    hist.mkdir(parents=True)
    (hist / "history.json").write_text(json.dumps({"step": [1, 2], "train_loss": [3.0, 2.0], "val_step": [0, 2],
                                                   "val_bpb": [2.5, 1.5]}))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    out = report.generate(copy_to=checkout / "report.md")
    text = out.read_text()
    assert "| CORE (offline, 20 tasks) | 0.1250 | - | - | - |" in text
    assert "| ARC-Easy | - | - | 0.5000 | - |" in text and "| ChatCORE | - | - | 0.2500 | - |" in text
    assert "total wall time" in text and "## Code size" in text and "git commit" in text
    assert "![base-d1](base-d1.png)" in text
    plot = report.report_dir() / "base-d1.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only report.md lands in the checkout; its image points at the plot in the base dir
    assert [p.name for p in checkout.iterdir()] == ["report.md"]
    assert f"![base-d1]({plot.resolve()})" in (checkout / "report.md").read_text()
    assert text.index("## Base model evaluation") < text.index("## Chat evaluation sft")
    report.reset()
    assert not list(report.report_dir().glob("*.md"))


def test_summary_gives_core_under_both_scorings(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    report.reset()
    report.log_section("Base model evaluation", [{"scoring": "dclm, nanochat"}],
                       metrics={"CORE": 0.2, "CORE (nanochat scoring)": 0.21})
    text = report.generate(copy_to=tmp_path / "copy.md").read_text()
    assert "| CORE | 0.2000 | - | - | - |\n| CORE (nanochat scoring) | 0.2100 | - | - | - |" in text
    assert "| ChatCORE | - | - | - | - |" in text
