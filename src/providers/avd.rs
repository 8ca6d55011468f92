//! Azure Virtual Desktop (ARM) adapter.
