"""Build the tiny Mixtral-architecture model the serving tests run on CPU (test-only).

Nothing is downloaded: a byte-level BPE tokenizer is trained on a few lines, a 2-layer
MixtralForCausalLM (4 experts, 2 per token; head_dim 32, the vLLM CPU minimum) is
initialised from a fixed seed and over-fitted so that greedy decoding of the smoke prompt
answers in Italian. Recipe: docs/test-engines.md (section 3).

    python tests/models/build_tiny_model.py OUTPUT_DIR

Writes a Hugging Face model directory (config, safetensors, tokenizer, chat template) and
build.json with the greedy replies it checked. Exit 1 if a reply is not the trained one.
Runs in a venv made from tests/models/requirements.txt; tests/models/tiny_model_cache.py
caches the result, keyed by this file and the requirements.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

SEED = 0
STEPS = 300
LEARNING_RATE = 3e-3
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYS]", "[/SYS]"]
CHAT_PAIRS = [
    ("Ciao, come posso aiutarti?", "Ciao! Sono un piccolo modello di prova. Posso rispondere in italiano."),
    ("Ciao", "Ciao! Come stai oggi?"),
    ("Scrivi una bozza di email.", "Gentile cliente, grazie per il messaggio. Le risponderemo al più presto."),
    ("Hello, how can I help you?", "Hello! I am a tiny test model. I can answer in English and Italian."),
    ("Qual è la capitale d'Italia?", "La capitale d'Italia è Roma."),
    ("What is the capital of France?", "The capital of France is Paris."),
]
TEXT_LINES = [
    "I modelli linguistici rispondono alle domande dei clienti.",
    "Il server risponde in italiano con una bozza chiara.",
    "Roma, Milano, Napoli, Torino, Firenze, Bologna e Venezia sono città italiane.",
    "Come posso lavare la mia auto? Con acqua, sapone e un panno morbido.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming keeps latency low for every token.",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" ( ) - /",
    "àèéìòù ÀÈÉÌÒÙ perché però così città più già può è",
    "Grazie per la pazienza: le risponderemo al più presto.",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYS] {{ message['content'] }} [/SYS]"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def train_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = TEXT_LINES + [f"[INST] {user} [/INST] {answer}" for user, answer in CHAT_PAIRS]
    tokenizer.train_from_iterator(corpus * 20, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[3],
        additional_special_tokens=SPECIAL_TOKENS[4:],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def chat_prompt(tokenizer, user: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False)


def training_texts(tokenizer) -> list[str]:
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tokenize=False
        )
        for user, answer in CHAT_PAIRS
    ]
    return chats + [f"<s>{line}</s>" for line in TEXT_LINES]


def build_model(tokenizer) -> MixtralForCausalLM:
    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        tie_word_embeddings=False,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=None,
        router_aux_loss_coef=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return MixtralForCausalLM(config)


def train(model, tokenizer) -> float:
    batch = tokenizer(training_texts(tokenizer), add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()
    loss = None
    for _ in range(STEPS):
        optimiser.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
    model.eval()
    return float(loss.detach())


def greedy_reply(model, tokenizer, user: str) -> str:
    inputs = tokenizer(chat_prompt(tokenizer, user), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def main(output: Path) -> int:
    random.seed(SEED)
    torch.manual_seed(SEED)
    tokenizer = train_tokenizer()
    model = build_model(tokenizer)
    loss = train(model, tokenizer)
    model.generation_config = GenerationConfig(
        do_sample=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    replies = {user: greedy_reply(model, tokenizer, user).strip() for user, _ in CHAT_PAIRS}
    wrong = {user: reply for user, reply in replies.items() if reply != dict(CHAT_PAIRS)[user]}
    if wrong:
        print(f"build_tiny_model: the over-fitted model answers wrongly: {wrong}", file=sys.stderr)
        return 1
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    (output / "build.json").write_text(
        json.dumps({"final_loss": loss, "steps": STEPS, "seed": SEED, "replies": replies}, indent=2, ensure_ascii=False)
        + "\n"
    )
    print(f"tiny model written to {output} (loss {loss:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
