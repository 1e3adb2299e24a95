//! `top`'s formats of the model: a [`reading`] of the engines' totals (from a model this
//! process holds, or from another observer's pages), a [`view`] of the rates between two
//! readings (also the `--json` document), the [`controls`] the keys change, and the screens
//! [`draw`] paints. The terminal and the sources are `serve::top`'s.

pub mod controls;
pub mod draw;
pub mod reading;
pub mod view;
