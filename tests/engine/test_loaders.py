"""Weights from Hugging Face folders and GGUF files, checked against transformers."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.config import EngineConfig
from engine.errors import EngineError, ModelNotFoundError, UnsupportedModelError
from engine.model.gguf_loader import unpermute_rope_rows
from engine.model.loader import load_checkpoint
from engine.runtime.llm_engine import LLMEngine
from tests.engine.tiny import TINY, tiny_weights, write_hf_folder

IDS = [3, 17, 42, 8, 8, 91, 0, 55, 23, 64, 12]
QWEN2 = replace(TINY, architecture="qwen2", attention_bias=True, tie_word_embeddings=True)


def engine_for(path, **settings) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(path), dtype="float32", num_blocks=16, block_size=4,
                                  **settings))


def hf_logits(path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0]


@pytest.mark.slow
@pytest.mark.parametrize(("model_type", "config"),
                         [("llama", TINY), ("mistral", TINY), ("qwen2", QWEN2)])
def test_hf_folder_logits_match_transformers(tmp_path, model_type, config):
    path = write_hf_folder(tmp_path / model_type, config, model_type)
    ours = engine_for(path).score(IDS)
    assert torch.allclose(ours, hf_logits(path), atol=1e-4)


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q and K rows of a llama model."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, arch="llama", permute=True):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(TINY.num_layers)
    writer.add_context_length(TINY.max_position)
    writer.add_embedding_length(TINY.hidden_size)
    writer.add_feed_forward_length(TINY.intermediate_size)
    writer.add_head_count(TINY.num_heads)
    writer.add_head_count_kv(TINY.num_kv_heads)
    writer.add_rope_freq_base(TINY.rope_theta)
    writer.add_layer_norm_rms_eps(TINY.rms_norm_eps)
    writer.add_vocab_size(TINY.vocab_size)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer_names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                   "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                   "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                   "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, w in tiny_weights().items():
        array = w.numpy()
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module = rest.removesuffix(".weight")
            if permute and module in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = TINY.num_heads if module.endswith("q_proj") else TINY.num_kv_heads
                array = llama_cpp_permute(array, heads)
            writer.add_tensor(f"blk.{i}.{layer_names[module]}.weight", array)
        else:
            writer.add_tensor(names[name], array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(4 * 8, 5)
    permuted = torch.from_numpy(llama_cpp_permute(w.numpy(), 4))
    assert not torch.equal(permuted, w)
    assert torch.equal(unpermute_rope_rows(permuted, 4), w)


def test_gguf_weights_equal_the_hf_weights(tmp_path):
    gguf_ckpt = load_checkpoint(str(write_tiny_gguf(tmp_path / "tiny.gguf")), torch.float32)
    hf_ckpt = load_checkpoint(str(write_hf_folder(tmp_path / "hf", TINY, "llama")), torch.float32)
    assert gguf_ckpt.config.rms_norm_eps == pytest.approx(1e-6)  # stored as float32 in GGUF
    assert replace(gguf_ckpt.config, rms_norm_eps=1e-6) == hf_ckpt.config
    assert gguf_ckpt.weights.keys() == hf_ckpt.weights.keys()
    for name, w in hf_ckpt.weights.items():
        assert torch.equal(gguf_ckpt.weights[name], w), name
    assert gguf_ckpt.model_id.startswith("xxh3_128:") and gguf_ckpt.model_id != hf_ckpt.model_id
    assert gguf_ckpt.tokenizer is None


def test_folder_with_one_gguf_loads_it(tmp_path):
    write_tiny_gguf(tmp_path / "only.gguf")
    assert load_checkpoint(str(tmp_path), torch.float32).config.num_layers == 2


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        engine_for(tmp_path / "nope.gguf")


def test_folder_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"without config\.json"):
        engine_for(tmp_path)


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF"):
        engine_for(bad)


def test_gguf_of_unsupported_architecture_is_a_clear_error(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="architecture 'mamba' is not supported"):
        engine_for(tmp_path / "mamba.gguf")


def test_hf_folder_of_unsupported_type_is_a_clear_error(tmp_path):
    path = write_hf_folder(tmp_path / "m", TINY, "llama")
    (path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2'"):
        engine_for(path)


def test_errors_are_value_errors():
    assert issubclass(EngineError, ValueError)
    with pytest.raises(ValueError, match="dtype 'float8'"):
        LLMEngine(EngineConfig(dtype="float8"))
