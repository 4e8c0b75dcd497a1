#!/usr/bin/env python3
"""An independent implementation of SpatialThinker's dense reward (docs/FORMATS.md#the-dense-reward) with numpy and scipy's
linear_sum_assignment, and a generator of completions (valid and malformed) scored by it.
Writes tests/fixtures/goldens/reward_cases.jsonl for tests/reward_parity.rs. Run alone or from
make_fixtures.py.

Ids are matched with re.fullmatch(r"[a-zA-Z_]+\\.[0-9]+") — ASCII digits, no trailing newline — as st
does; the original's re.match("^...\\d+$") also takes other Unicode digits and a final newline."""
import json
import math
import random
import re
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES  # noqa: E402

TAGS = ("observe", "scene", "think", "answer")
ID = re.compile(r"[a-zA-Z_]+\.[0-9]+")


def between(text, tag):
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.find(f"</{tag}>", start)
    return None if end < 0 else text[start:end]


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_scene(body):
    """The scene if it follows the syntactic rules, else None."""
    try:
        d = json.loads(body.strip())
    except (ValueError, RecursionError):
        return None
    if not isinstance(d, dict):
        return None
    objs, rels = d.get("objects", []), d.get("relationships", [])
    if not isinstance(objs, list) or not isinstance(rels, list):
        return None
    ids = []
    for o in objs:
        if not isinstance(o, dict) or set(o) != {"id", "bbox"}:
            return None
        if not isinstance(o["id"], str) or not ID.fullmatch(o["id"]):
            return None
        b = o["bbox"]
        if not isinstance(b, list) or len(b) != 4 or not all(is_number(x) for x in b):
            return None
        ids.append(o["id"])
    if len(ids) != len(set(ids)):
        return None
    for r in rels:
        if not isinstance(r, dict):
            return None
        if not all(isinstance(r.get(k), str) for k in ("subject", "predicate", "object")):
            return None
        if not ID.fullmatch(r["subject"]) or not ID.fullmatch(r["object"]):
            return None
    return {"objects": objs, "relationships": rels}


def gt_scene(body):
    """Ground-truth scenes are read leniently: lists or nothing."""
    try:
        d = json.loads(body.strip())
    except (ValueError, AttributeError):
        return {"objects": [], "relationships": []}
    return {"objects": d.get("objects", []), "relationships": d.get("relationships", [])}


def ciou(a, b):
    wa, ha, wb, hb = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = wa * ha + wb * hb - inter + 1e-7
    iou = inter / union
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2 + 1e-7
    v = 4 / math.pi ** 2 * (math.atan(wb / (hb + 1e-7)) - math.atan(wa / (ha + 1e-7))) ** 2
    alpha = 0.0 if (1 - iou) + v == 0 else v / ((1 - iou) + v)
    return iou - (rho2 / c2 + alpha * v)


def label(i):
    return i.split(".")[0].replace("_", " ").replace("-", " ").strip().lower()


def image_size(prompt):
    m = re.search(r"Image size:\s*\(?\s*([0-9.]+)\s*x\s*([0-9.]+)", prompt)
    return float(m.group(1)), float(m.group(2))


def reward(completion, ground_truth, prompt):
    fmt = all(completion.count(f"<{t}>") == 1 and completion.count(f"</{t}>") == 1 for t in TAGS)
    pred = parse_scene(between(completion, "scene") or "") if fmt else None
    if pred is None:
        return dict(overall=0.0, format=0.0, count=0.0, accuracy=0.0, spatial=0.0)
    gt = gt_scene(between(ground_truth, "scene") or "")
    np_, ng = len(pred["objects"]), len(gt["objects"])
    obj = max(0.0, 1 - abs(np_ - ng) / max(ng, 1))
    nr, ngr = len(pred["relationships"]), len(gt["relationships"])
    count = obj if ngr == 0 else 0.7 * obj + 0.3 * max(0.0, 1 - abs(nr - ngr) / max(ngr, 1))
    a, b = between(completion, "answer"), between(ground_truth, "answer")
    acc = 1.0 if a is not None and b is not None and a.strip().lower() == b.strip().lower() else 0.0
    spatial = 0.0
    if acc == 1.0:
        if ng == 0:
            spatial = 1.0 if ngr > 0 or np_ == 0 else 0.0
        else:
            w, h = image_size(prompt)
            rows = max(np_, ng)
            cost = np.full((rows, ng), 1e5)
            score = np.zeros((rows, ng))
            for i, p in enumerate(pred["objects"]):
                for j, g in enumerate(gt["objects"]):
                    pb = [p["bbox"][0] / w, p["bbox"][1] / h, p["bbox"][2] / w, p["bbox"][3] / h]
                    gb = [g["bbox"][0] / w, g["bbox"][1] / h, g["bbox"][2] / w, g["bbox"][3] / h]
                    c = (ciou(pb, gb) + 1) / 2
                    sim = 1.0 if label(p["id"]) == label(g["id"]) else 0.0
                    cost[i, j] = 2 * (1 - sim) + (1 - c)
                    score[i, j] = c
            r, c = linear_sum_assignment(cost)
            spatial = sum(score[i, j] for i, j in zip(r, c) if i < np_) / ng
    overall = 0.1 + 0.2 * count + 0.5 * acc + 0.2 * spatial
    return dict(overall=overall, format=1.0, count=count, accuracy=acc, spatial=spatial)


LABELS = ["cup", "plate", "man", "bike", "coffee_cup", "Tall-Tree", "dog", "table"]


def random_scene(rng, w, h, n):
    objs = []
    for k in range(n):
        lab = rng.choice(LABELS)
        x1, y1 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        box = [x1, y1, x1 + rng.uniform(1, w * 0.2), y1 + rng.uniform(1, h * 0.2)]
        if rng.random() < 0.7:
            box = [round(v) for v in box]
        objs.append({"id": f"{lab}.{k + 1}", "bbox": box})
    rels = []
    for _ in range(rng.randint(0, 3) if objs else 0):
        s, o = rng.choice(objs), rng.choice(objs)
        rels.append({"subject": s["id"], "predicate": rng.choice(["left of", "on", "behind"]), "object": o["id"]})
    return {"objects": objs, "relationships": rels}


def perturb(rng, scene, w, h):
    """A prediction near the ground truth: boxes moved, objects dropped or added, labels swapped."""
    objs = [dict(o, bbox=[v + rng.uniform(-0.1, 0.1) * (w if k % 2 == 0 else h) for k, v in enumerate(o["bbox"])])
            for o in scene["objects"] if rng.random() < 0.8]
    if objs and rng.random() < 0.3:
        i, j = rng.randrange(len(objs)), rng.randrange(len(objs))
        objs[i]["bbox"], objs[j]["bbox"] = objs[j]["bbox"], objs[i]["bbox"]
    if rng.random() < 0.3:
        objs.append({"id": f"{rng.choice(LABELS)}.{len(objs) + 9}", "bbox": [1, 2, 30, 40]})
    return {"objects": objs, "relationships": scene["relationships"][: rng.randint(0, 3)]}


MALFORM = [
    lambda t: t.replace("<think>", "", 1),
    lambda t: t + "<answer>(A) x</answer>",
    lambda t: t.replace('"bbox": [', '"bbox": [1, ', 1),
    lambda t: t.replace('"id": "', '"id": "9', 1),
    lambda t: t.replace('{"id"', '{"score": 1, "id"', 1),
    lambda t: t.replace("<scene>", "<scene>{", 1),
    lambda t: t.replace('"objects": [', '"objects": {', 1).replace('], "relationships"', '}, "relationships"', 1),
    lambda t: t.replace('"subject": "', '"subject": "bad ', 1),
    lambda t: t.replace("</observe>", "</observe></observe>", 1),
]


def cases(n=400, seed=0):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        w, h = rng.choice([(640, 480), (451, 300), (1000, 29), (1, 1), (1920, 1080)])
        prompt = f"... Image size: ({w} x {h})\n\nQ" if k % 2 else f"... Image size: {w} x {h}\n\nQ"
        gt = random_scene(rng, w, h, rng.randint(0, 4))
        answers = ["(A) yes", "(B) no", "(C) maybe"]
        gt_answer = rng.choice(answers)
        pred = perturb(rng, gt, w, h)
        if pred["objects"] and rng.random() < 0.2:  # duplicate id
            pred["objects"].append(dict(pred["objects"][0]))
        answer = gt_answer.upper() if rng.random() < 0.2 else (gt_answer if rng.random() < 0.7 else rng.choice(answers))
        completion = (f"<observe> seen </observe>\n<scene>\n{json.dumps(pred)}\n</scene>\n<think> because </think>\n"
                      f"<answer> {answer} </answer>")
        if rng.random() < 0.25:
            completion = rng.choice(MALFORM)(completion)
        ground_truth = f"<scene>{json.dumps(gt)}</scene><answer>{gt_answer}</answer>"
        out.append({"completion": completion, "ground_truth": ground_truth, "problem": prompt,
                    "expected": reward(completion, ground_truth, prompt)})
    return out


def write(path: Path):
    rows = cases()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt = sum(r["expected"]["format"] for r in rows)
    acc = sum(r["expected"]["accuracy"] for r in rows)
    print(f"{len(rows)} reward cases: {fmt:.0f} well-formed, {acc:.0f} correct answers", file=sys.stderr)


if __name__ == "__main__":
    write(FIXTURES / "goldens" / "reward_cases.jsonl")
