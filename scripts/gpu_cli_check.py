"""The README's CLI commands with --device cuda give what --device cpu gives, on a tiny seeded llama saved to a folder.

    PYTHONPATH=src python scripts/gpu_cli_check.py cuda        # needs a CUDA build of torch; ONLY=neurons,steer to pick

Writes $OUT/cli_check.json (or /tmp/cli-check/). Results: docs/gpu.md, "The command line on CUDA"."""
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, "tests")
import torch
from tiny import tiny_llama, word_tokenizer

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
out = Path(os.environ.get("OUT", "/tmp/cli-check"))
out.mkdir(parents=True, exist_ok=True)
folder = Path("/tmp/tiny-llama")
model, tok = tiny_llama(torch.float32), word_tokenizer()
model.save_pretrained(folder); tok.save_pretrained(folder)
PROMPT = "paris is the capital of france . lisbon is the capital of"
env = dict(os.environ, PYTHONPATH="src" + os.pathsep + os.environ.get("PYTHONPATH", ""))

def cli(*args):
    r = subprocess.run([sys.executable, "-m", "attnlrp.cli", *args], capture_output=True, text=True, env=env)
    return r.returncode, r.stdout, r.stderr[-600:]

def maxrel(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())

report = {}
commands = {
    "explain": ["explain", PROMPT, "--model", str(folder), "--json"],
    "explain --generate 4": ["explain", PROMPT, "--model", str(folder), "--generate", "4", "--json"],
    "explain --generate 4 --row-batch 2": ["explain", PROMPT, "--model", str(folder), "--generate", "4", "--row-batch", "2", "--json"],
    "neurons": ["neurons", PROMPT, "--model", str(folder), "--json", "--top", "5"],
    "steer": ["steer", PROMPT, "--model", str(folder), "--off", "0:3", "--json"],
    "audit": ["audit", str(folder), "--prompt", PROMPT, "--json"],
}
only = os.environ.get("ONLY")
for name, args in commands.items():
    if only and name not in only.split(","):
        continue
    res = {}
    for dev in ("cpu", device):
        code, stdout, stderr = cli(*args, "--device", dev)
        res[dev] = {"rc": code, "stderr": stderr}
        if code == 0 or name == "audit":
            try:
                res[dev]["json"] = json.loads(stdout)
            except ValueError:
                res[dev]["stdout"] = stdout[-600:]
    a, b = res[device].get("json"), res["cpu"].get("json")
    if a is not None and b is not None:
        if name == "explain":
            res["max_rel_diff"] = maxrel(a["relevance"], b["relevance"])
        elif name.startswith("explain --generate"):
            res["same_tokens"] = a["token_ids"] == b["token_ids"]
            res["max_rel_diff"] = maxrel(a["matrix"], b["matrix"])
        elif name == "neurons":
            res["same_neurons"] = [(r["layer"], r["neuron"]) for r in a] == [(r["layer"], r["neuron"]) for r in b]
            res["max_rel_diff"] = maxrel([r["relevance"] for r in a], [r["relevance"] for r in b])
        elif name == "steer":
            res["equal_json_keys"] = sorted(a) == sorted(b)
            res["cuda_json"], res["cpu_json"] = a, b
        elif name == "audit":
            res["ok"] = {d: res[d]["rc"] for d in ("cpu", device)}
    report[name] = res
    summary = {k: v for k, v in res.items() if k not in ("cpu", device, "cuda_json", "cpu_json")}
    print(name, {d: res[d]["rc"] for d in ("cpu", device)}, summary, res[device]["stderr"][-300:] if res[device]["rc"] else "", flush=True)
(out / "cli_check.json").write_text(json.dumps(report, indent=1, default=str))
