//! Choosing the next token: a chain of small sampling stages (llama.cpp's sampler chain, in
//! Hugging Face's order: repetition penalty → temperature → top-k → top-p), then a greedy or a
//! seeded random pick. A grammar stage joins the same chain (`Sampler::push_front`).

mod sampler;

pub use sampler::{Pick, RepetitionPenalty, Sampler, SamplingParams, Stage, Temperature, TopK, TopP};
