//! The model's answer as data (docs/FORMATS.md#the-response): the four tagged sections, the scene graph, the chosen
//! option. [`parse_response`] is tolerant: it returns whatever parsed plus `valid` and the
//! reasons it is not; the grammar-constrained decoder makes `valid` hold by construction, and
//! the reward reads the same parse.

mod draw;
mod graph;
mod options;
mod parse;

pub use draw::draw_scene;
pub use graph::{BBox, Relationship, SceneGraph, SceneObject, is_valid_id};
pub use options::{Choice, OptionSet, parse_choice};
pub use parse::{Response, Rules, TAGS, parse_response};
