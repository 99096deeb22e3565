"""A tiny Hugging Face chat checkpoint built in about a second, for the gateway's tests.

`build_tiny_chat_model(directory)` trains a byte-level BPE tokenizer on a small corpus, adds a
ChatML-style chat template with `<|im_end|>` as end of sequence, and saves a randomly initialised
two-layer `Qwen3ForCausalLM` beside it: a standard checkpoint that `AutoModelForCausalLM` and
`AutoTokenizer` load offline, like any model `polydistill serve` is given.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A student model learns from several teachers of different families.",
    "Gemma, Qwen and gpt-oss tokenizers split the same text differently.",
    "Prices are counted in integer micro-units of a dollar, never in floats.",
    "Ünïcödé text, emoji 🙂 and numbers 12345 keep the byte-level tokenizer honest.",
    "def add(a, b):\n    return a + b\n",
]


def train_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens, trained on `CORPUS`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_chat_model(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random Qwen3 chat checkpoint (weights, config, tokenizer) into `directory`."""
    tokenizer = train_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    # Larger output weights give peaked, varied next-token distributions, so that sampling
    # and logprob tests see more than a uniform distribution.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
