//! CPU backend: placeholder module replaced in the next step.
