"""Shared builders for the torch-adapter tests: a tiny random Llama, a tiny random Gemma 3, a byte-level
tokenizer, and recipes from flat option keys."""

import torch

from qronos_linalg.options import recipe_from_options

TINY_VOCAB = 256
TINY_SEED = 0


def tiny_llama(*, hidden=48, intermediate=80, layers=2, heads=4, kv_heads=2, tie=True, random_norms=True):
    """A randomly initialised LlamaForCausalLM (non-power-of-two sizes by default: 48 = 12·4, 80 = 20·4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(TINY_SEED)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).eval()
    if random_norms:
        generator = torch.Generator().manual_seed(TINY_SEED)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" in name:
                    parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
    return model


def tiny_gemma3(*, hidden=48, intermediate=80, layers=4, heads=4, kv_heads=2, head_dim=12, sliding_window=6):
    """A randomly initialised Gemma3ForCausalLM whose blocks alternate sliding-window and global attention
    (different masks and rotary bases per block); windows longer than ``sliding_window`` tell them apart."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(TINY_SEED)
    config = Gemma3TextConfig(
        vocab_size=TINY_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=256,
        sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
            "full_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )
    return Gemma3ForCausalLM(config).eval()


def token_batch(n_windows, seq_len, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_VOCAB, (n_windows, seq_len), generator=generator)


def byte_tokenizer():
    """A fast tokenizer with exactly 256 byte-level tokens (no merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def recipe(**options):
    """A recipe from flat option keys, as on the command line (algo, bits, group_size, act_bits, …)."""
    return recipe_from_options(options)
