//! `config.json` parsing: any text either gives an error or a config that validates, survives a
//! JSON round trip unchanged, and whose derived quantities can be computed without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quest_model::LlamaConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = LlamaConfig::from_json(text) else {
        return;
    };
    cfg.validate().expect("from_json returns a valid config");
    let again = serde_json_round_trip(&cfg);
    assert_eq!(again, cfg, "config changed in a JSON round trip");
    assert_eq!(cfg.num_attention_heads % cfg.num_kv_heads(), 0);
    assert!(cfg.head_dim() > 0 && cfg.head_dim() % 2 == 0);
    let _ = cfg.eos_tokens();
    if cfg.head_dim() <= 4096 {
        let f = cfg.rope().inv_freq();
        assert_eq!(f.len(), cfg.head_dim() / 2);
        assert!(
            f.iter().all(|x| x.is_finite()),
            "non-finite RoPE frequencies from a validated config: {cfg:?}"
        );
    }
});

fn serde_json_round_trip(cfg: &LlamaConfig) -> LlamaConfig {
    let text = serde_json::to_string(cfg).expect("serialize a config");
    LlamaConfig::from_json(&text).expect("a serialized valid config parses again")
}
