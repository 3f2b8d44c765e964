//! Llama model on the quest backends.
