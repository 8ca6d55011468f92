//! WinRM host emulator.
