//! On-premises RD Session Host and MultiPoint over WinRM.
