//! Tokenizer loading: the input up to the first NUL byte is `tokenizer.json`; what follows it, if
//! anything, is `tokenizer_config.json` (with the chat template). A tokenizer that loads must
//! encode and decode a short text and render its chat template without panicking.
//!
//! `Tokenizer::from_dir` catches panics of the tokenizers library (which has `expect`s on some
//! malformed input) and returns an error. libfuzzer-sys's panic hook aborts on every panic, caught
//! or not, so this target replaces it with one that only prints: a panic that escapes our code
//! still aborts (libfuzzer-sys checks the result of its own `catch_unwind`) and is a crash.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use quest_model::Tokenizer;

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("panic (caught?): {info}"))));
    let dir = quest_fuzz::scratch_dir();
    let (tok_json, cfg_json) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    quest_fuzz::write(dir, "tokenizer.json", tok_json);
    match cfg_json {
        Some(c) => quest_fuzz::write(dir, "tokenizer_config.json", c),
        None => quest_fuzz::remove(dir, "tokenizer_config.json"),
    }
    let Ok(tok) = Tokenizer::from_dir(dir) else {
        return;
    };
    let _ = tok.vocab_size();
    if let Ok(ids) = tok.encode("Hello, world! 1234 <|im_end|> héllo") {
        let _ = tok.decode(&ids);
        // Out-of-vocabulary ids must be an error or skipped, never a panic.
        let mut bad = ids.clone();
        bad.push(u32::MAX);
        let _ = tok.decode(&bad);
    }
    if tok.has_chat_template() {
        let _ = tok.apply_chat_template("Hi {{ there }}");
    }
});
