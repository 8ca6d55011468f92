//! WVD classic (RDInfra broker) emulator.
