//! Windows Virtual Desktop classic (RDInfra broker) adapter.
