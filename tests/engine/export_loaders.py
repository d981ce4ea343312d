"""Loads an export folder with ms-swift's or LLaMA-Factory's own dataset loaders; prints rows per dataset as JSON.

Run with the framework's interpreter (a venv of its own, never the project's):
    /work/venvs/swift/bin/python tests/engine/export_loaders.py ms_swift EXPORT_DIR
    /work/venvs/lf/bin/python tests/engine/export_loaders.py llama_factory EXPORT_DIR
It imports only the framework (no project module). Each dataset is loaded the way the framework's trainer loads
it: ms-swift's `load_dataset` (its AutoPreprocessor, which validates and standardises messages, media and
`rejected_response`), LLaMA-Factory's `_get_merged_dataset` (reads dataset_info.json, aligns sharegpt rows; stage
`rm` for ranking datasets, whose converter turns chosen/rejected into a two-response `_response`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ms_swift(folder: Path) -> dict[str, dict]:
    from swift.dataset import load_dataset  # ms-swift 4.x

    out = {}
    for path in sorted(folder.glob("*.jsonl")):
        train, _ = load_dataset([str(path)], split_dataset_ratio=0.0, num_proc=1, shuffle=False)
        row = train[0]
        out[path.stem] = {"rows": len(train), "columns": sorted(train.column_names),
                          "rejected_response": bool(row.get("rejected_response")),
                          "videos": row.get("videos"), "audios": row.get("audios"),
                          "roles": [m["role"] for m in row["messages"]]}
    return out


def llama_factory(folder: Path) -> dict[str, dict]:
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.hparams import get_train_args

    info = json.loads((folder / "dataset_info.json").read_text())
    out = {}
    for name, entry in info.items():
        stage = "rm" if entry.get("ranking") else "sft"
        model_args, data_args, training_args, *_ = get_train_args({
            "model_name_or_path": "unused", "stage": stage, "do_train": True, "dataset": name,
            "dataset_dir": str(folder), "output_dir": str(folder / "_lf_out"), "finetuning_type": "lora",
            "template": "qwen2_omni", "overwrite_cache": True, "preprocessing_num_workers": 1,
            "report_to": "none"})
        dataset = _get_merged_dataset([name], model_args, data_args, training_args, stage)
        row = dataset[0]
        out[name] = {"rows": len(dataset), "responses": len(row["_response"]), "prompt_turns": len(row["_prompt"]),
                     "system": bool(row["_system"]), "videos": row["_videos"], "audios": row["_audios"],
                     "usable": sum(1 for r in dataset if r["_response"] and len(r["_response"]) >= 1)}
    return out


if __name__ == "__main__":
    framework, export_dir = sys.argv[1], Path(sys.argv[2])
    result = {"ms_swift": ms_swift, "llama_factory": llama_factory}[framework](export_dir / framework)
    print("RESULT " + json.dumps(result))
