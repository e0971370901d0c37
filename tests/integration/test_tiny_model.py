"""The tiny model the serving tests use: built locally, cached, and answering in Italian from disk."""

import json
import subprocess

from tests.models.tiny_model_cache import REQUIREMENTS, build_venv, cache_root

# Reloads the saved files (not the model the build trained in memory) and decodes greedily.
GREEDY_FROM_DISK = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
prompt = tokenizer.apply_chat_template([{"role": "user", "content": sys.argv[2]}], tokenize=False)
inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=30, do_sample=False)
print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
"""


def test_the_tiny_model_is_a_small_mixtral_vllm_can_serve_on_cpu(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (4, 2)
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # vLLM's CPU attention minimum
    assert (tiny_model / "model.safetensors").stat().st_size < 10_000_000
    assert "[INST]" in (tiny_model / "chat_template.jinja").read_text()


def test_the_saved_tiny_model_answers_the_smoke_prompt_in_italian(tiny_model):
    venv = build_venv(cache_root())
    assert REQUIREMENTS.exists()
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", GREEDY_FROM_DISK, str(tiny_model), "Ciao, come posso aiutarti?"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "Ciao! Sono un piccolo modello di prova. Posso rispondere in italiano."
    )
