"""Our multiple-choice template vs nanochat's on the same problems: accuracy, and how much the model
answers in the expected form (probability mass on the allowed letters, unrestricted argmax a letter).

    python -m dev.mc_template_probe -i sft -x 500

Problems: -x spread evenly over each task (the same ones for both templates); prompts longer than
the context are truncated as chat_eval does for ours, whole for nanochat's. Prints a table and a JSON line.
"""

import argparse
import json

import torch

from nanochat.chat_metrics import fit_prompt, letter_token, spread_indices
from nanochat.checkpoint_manager import load_model
from tasks.arc import ARC
from tasks.common import MC_TEMPLATES
from tasks.mmlu import MMLU

TASKS = {"ARC-Easy": lambda t: ARC("ARC-Easy", "test", template=t),
         "ARC-Challenge": lambda t: ARC("ARC-Challenge", "test", template=t),
         "MMLU": lambda t: MMLU("all", "test", template=t)}

parser = argparse.ArgumentParser(description="Multiple-choice template probe.")
parser.add_argument("-i", "--stage", default="sft", choices=["base", "mid", "sft", "rl"])
parser.add_argument("-x", "--max-problems", type=int, default=500, help="problems per task, spread evenly")
args = parser.parse_args()

model, tokenizer, meta = load_model(args.stage, "cpu", phase="eval")
bos = tokenizer.get_bos_token_id()
rows = []
for name, make in TASKS.items():
    for template in MC_TEMPLATES:
        task = make(template)
        correct = mass = letter_top = 0.0
        indices = spread_indices(len(task), args.max_problems)
        for i in indices:
            conversation = task[i]
            ids = tokenizer.render_for_completion(conversation)
            ids = fit_prompt(ids, model.config.sequence_len, bos) if template == "ours" else ids
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0, -1]  # (V,)
            allowed = torch.tensor([letter_token(tokenizer, x) for x in conversation["letters"]])  # (L,)
            probs = logits.softmax(-1)
            mass += probs[allowed].sum().item()
            letter_top += float(int(logits.argmax()) in allowed.tolist())
            pick = conversation["letters"][int(logits[allowed].argmax())]
            correct += float(task.evaluate(conversation, pick))
        n = len(indices)
        rows.append({"task": name, "template": template, "problems": n, "accuracy": correct / n,
                     "letter_mass": mass / n, "argmax_is_letter": letter_top / n})
        r = rows[-1]
        print(f"{name:14s} {template:9s} {n:5d}  accuracy {r['accuracy']:.4f}  mass on letters {r['letter_mass']:.4f}  "
              f"argmax a letter {r['argmax_is_letter']:.4f}")
print(json.dumps({"stage": args.stage, "rows": rows}))
