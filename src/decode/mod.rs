//! Choosing the next token: a chain of small sampling stages (llama.cpp's sampler chain, in
//! Hugging Face's order: repetition penalty → temperature → top-k → top-p), then a greedy or a
//! seeded random pick. The [`grammar`] stage joins the same chain first (`Sampler::push_front`)
//! and may force tokens, which the engine appends without sampling, several per decoder pass.

pub mod grammar;
mod lookup;
mod sampler;

pub use lookup::prompt_lookup;

pub use sampler::{Pick, RepetitionPenalty, Sampler, SamplingParams, Stage, Temperature, TopK, TopP};
