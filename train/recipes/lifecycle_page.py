"""The lifecycle's summary page: OUT/summary/index.html and summary.md, with every plot copied beside them.

One section per step, each from the files that step wrote (nothing is recomputed): the build's report.json and
its funnel and splits chart (report.png); the SFT run's metrics.jsonl and loss curve; each CA-DPO
round's preference summary (pairs per query) and judge-score histogram, and the DPO run's loss / margin /
accuracy; the two SABER-Test evaluations and their comparison. A file a failed or unfinished step did not write
is reported as missing, so the page of a stopped run says how far it got.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from train.recipes.lifecycle import LifecycleConfig, StepResult, layout

# The split counts worth a line (the build's report.png already charts the splits).
SPLIT_ROWS = ("sed_train", "saber_test.consistent", "saber_test.inconsistent", "relations.judged",
              "relations.consistent", "relations.inconsistent", "held_out_same_video", "held_out_same_speaker")
DEMO_NOTE = ("The demo's models are tiny and random: every figure here shows the machinery working end to end "
             "(clips filtered, records written, losses falling, pairs formed, both models evaluated), not model "
             "quality. Point the configs at real models for real numbers.")


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (file name in summary/, caption)
    markdown: str = ""  # a ready markdown text (the comparison), as is in .md, its tables as tables in HTML
    missing: list[str] = field(default_factory=list)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _copy(src: Path, dest: Path, name: str, caption: str, section: Section) -> None:
    if src.exists():
        shutil.copyfile(src, dest / name)
        section.images.append((name, caption))
    else:
        section.missing.append(str(src))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _flat(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        items += _flat(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return items


def build_section(paths: dict[str, str], dest: Path) -> Section:
    section = Section("1. Build (clips -> SABER dataset, SED records, SABER-Test)")
    report = _json(Path(paths["build"]) / "report.json")
    if report is None:
        section.missing.append(f"{paths['build']}/report.json")
        return section
    retry = report.get("retry", {})
    section.rows += [("clips in", report["input"]), ("kept", report["kept"]), ("rejected", report["rejected"]),
                     ("pending retry", retry.get("pending", 0)), ("gave up", retry.get("gave_up", 0))]
    section.rows += [(f"rejected at {stage}", count) for stage, count in report["rejected_by_stage"].items()]
    splits = dict(_flat(report.get("splits") or {}))
    section.rows += [(f"split {key}", splits[key]) for key in SPLIT_ROWS if key in splits]
    _copy(Path(paths["build"]) / "report.png", dest, "funnel.png",
          "funnel (clips left after each stage), rejections by reason, splits", section)
    return section


def sft_section(paths: dict[str, str], dest: Path) -> Section:
    section = Section("2. SED supervised fine-tuning")
    rows = _metrics(Path(paths["sft_run"]))
    if not rows:
        section.missing.append(f"{paths['sft_run']}/metrics.jsonl")
    else:
        losses = [r["loss"] for r in rows if "loss" in r]
        section.rows += [("optimizer steps", rows[-1]["step"]), ("first loss", losses[0]), ("last loss", losses[-1]),
                         ("final model", paths["sft_final"])]
    _copy(Path(paths["sft_run"]) / "loss.png", dest, "sft_loss.png", "SFT loss per optimizer step", section)
    return section


def ca_dpo_section(config: LifecycleConfig, paths: dict[str, str], dest: Path) -> Section:
    section = Section("3. CA-DPO (sample K responses, judge, pair, DPO)")
    rounds = _json(Path(paths["ca_dpo"]) / "rounds.json")
    if rounds is None:
        section.missing.append(f"{paths['ca_dpo']}/rounds.json")
        return section
    for entry in rounds:
        r = entry["round"]
        prefs = _json(Path(entry["preferences"]) / "summary.json") or {}
        queries = prefs.get("queries", {}).get("total", 0)
        section.rows += [(f"round {r} queries", queries), (f"round {r} pairs", entry["pairs"]),
                         (f"round {r} pairs per query", round(entry["pairs"] / queries, 2) if queries else "n/a")]
        if judged := prefs.get("responses"):
            section.rows += [(f"round {r} responses judged", judged.get("judged")),
                             (f"round {r} judge failures", sum(judged.get("judge_failures", {}).values()))]
        if entry.get("stopped"):
            section.rows.append((f"round {r} stopped", entry["stopped"]))
        _copy(Path(entry["preferences"]) / "scores.png", dest, f"round{r}_scores.png",
              f"round {r}: judge totals of winners and losers", section)
        run_dir = Path(entry.get("run_dir") or f"{paths['ca_dpo']}/runs/{config.dpo_name}-round{r}")
        if metrics := _metrics(run_dir):
            last = metrics[-1]
            section.rows += [(f"round {r} DPO steps", last["step"])]
            section.rows += [(f"round {r} last {key}", last[key]) for key in ("loss", "margin", "accuracy")
                             if key in last]
        _copy(run_dir / "loss.png", dest, f"round{r}_dpo.png", f"round {r}: DPO loss, margin, accuracy", section)
    return section


def eval_section(paths: dict[str, str], dest: Path) -> Section:
    section = Section("4. SABER-Test: the SFT model beside the CA-DPO model")
    for label, key in (("SFT", "eval_sft"), ("CA-DPO", "eval_dpo")):
        summary = _json(Path(paths[key]) / "summary.json")
        if summary is None:
            section.missing.append(f"{paths[key]}/summary.json")
            continue
        counts = summary.get("counts", {})
        section.rows += [(f"{label} {name}", value) for name, value in _flat(counts)]
    compare = Path(paths["compare"])
    try:
        section.markdown = (compare / "comparison.md").read_text()
    except OSError:
        section.missing.append(f"{compare}/comparison.md")
    _copy(compare / "comparison.png", dest, "comparison.png", "headline metrics, SFT vs CA-DPO", section)
    return section


def steps_section(results: Sequence[StepResult], total_seconds: float) -> Section:
    section = Section("Steps")
    section.rows += [(r.name, f"{r.status}, {r.seconds:.0f} s" + (" (earlier run)" if r.status == "skipped" else ""))
                     for r in results]
    section.rows.append(("this run, wall time", f"{total_seconds:.0f} s"))
    return section


def render_markdown(title: str, sections: Sequence[Section], note: str = "") -> str:
    lines = [f"# {title}", "", *([f"> {note}", ""] if note else [])]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.rows:
            lines += ["| | |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in s.rows], ""]
        if s.markdown:  # its headings one level below the section's
            lines += ["#" * 2 + line if line.startswith("#") else line for line in s.markdown.splitlines()] + [""]
        lines += [f"![{caption}]({name})" for name, caption in s.images]
        lines += [f"- missing: `{path}`" for path in s.missing]
        lines.append("")
    return "\n".join(lines)


def markdown_html(text: str) -> str:
    """The comparison's markdown as HTML: its pipe tables as tables, headings and bullets as paragraphs."""
    esc, out, table = html.escape, [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # skip the |---|---| rule
                table.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
            continue
        if table:
            out.append("<table class='md'>" + "".join(table) + "</table>")
            table = []
        if line.strip():
            out.append(f"<p>{esc(line.lstrip('#- ').replace('`', ''))}</p>")
    return "".join(out)


def render_html(title: str, sections: Sequence[Section], note: str = "") -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td{padding:2px 12px}"
             "tr:nth-child(even){background:#f3f3f3}img{max-width:100%;margin:8px 0}.missing{color:#b00}"
             "table.md tr:first-child{font-weight:bold}.note{background:#fff6d5;padding:8px}"
             f"</style></head><body><h1>{esc(title)}</h1>"]
    if note:
        parts.append(f"<p class='note'>{esc(note)}</p>")
    for s in sections:
        parts.append(f"<section><h2>{esc(s.title)}</h2>")
        if s.rows:
            parts.append("<table>" + "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(_fmt(v))}</td></tr>"
                                             for k, v in s.rows) + "</table>")
        if s.markdown:
            parts.append(markdown_html(s.markdown))
        parts += [f"<figure><img src='{esc(name)}' alt='{esc(caption)}'><figcaption>{esc(caption)}</figcaption>"
                  "</figure>" for name, caption in s.images]
        parts += [f"<p class='missing'>missing: {esc(path)}</p>" for path in s.missing]
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_page(config: LifecycleConfig, results: Sequence[StepResult], total_seconds: float) -> Path:
    """Writes OUT/summary/{index.html, summary.md, summary.json, *.png}; returns index.html's path."""
    paths = layout(config)
    dest = Path(paths["summary"])
    dest.mkdir(parents=True, exist_ok=True)
    sections = [steps_section(results, total_seconds), build_section(paths, dest), sft_section(paths, dest),
                ca_dpo_section(config, paths, dest), eval_section(paths, dest)]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"SABER lifecycle: {config.output} ({stamp})"
    note = DEMO_NOTE if "demo" in config.sft_config else ""
    (dest / "summary.md").write_text(render_markdown(title, sections, note))
    (dest / "index.html").write_text(render_html(title, sections, note))
    (dest / "summary.json").write_text(json.dumps(
        {s.title: {"rows": dict((k, v) for k, v in s.rows), "missing": s.missing} for s in sections},
        indent=2, default=str))
    return dest / "index.html"
