//! Azure Resource Manager emulator (Microsoft.DesktopVirtualization).
