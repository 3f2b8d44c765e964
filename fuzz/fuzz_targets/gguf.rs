//! The GGUF reader on arbitrary bytes: parse, dequantize every tensor, derive the Llama config
//! and the tokenizer, and when both succeed run the whole import into a scratch directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quest_model::convert::config_from_gguf;
use quest_model::gguf::{Gguf, unpermute_rotary_rows};
use quest_model::tokenizer::tokenizer_from_gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    for info in &g.tensors {
        // The parser checked every extent against the file: memory is bounded by its size.
        assert!(info.start + info.byte_len <= data.len(), "{info:?}");
        let values = g.dequantize(info).expect("a parsed tensor dequantizes");
        assert_eq!(values.len(), info.elements());
        assert_eq!(info.shape().iter().product::<usize>(), info.elements());
        let cols = info.dims[0] as usize;
        let _ = unpermute_rotary_rows(&values, 1 + (data.len() % 3), cols);
    }
    let config = config_from_gguf(&g);
    if let Ok(cfg) = &config {
        cfg.validate()
            .expect("config_from_gguf returns a valid config");
    }
    let tokenizer = tokenizer_from_gguf(&g);
    if let Ok(tok) = &tokenizer
        && let Ok(enc) = tok.encode("Hello world 123", false)
    {
        let _ = tok.decode(enc.get_ids(), true);
    }
    if config.is_ok() && tokenizer.is_ok() {
        let dir = quest_fuzz::scratch_dir();
        quest_fuzz::write(dir, "in.gguf", data);
        let out = dir.join("out");
        let _ = quest_model::convert_gguf(&dir.join("in.gguf"), &out, |_, _| {});
    }
});
