"""Store-and-forward to the HPC centre: the shared protocol, the appliance's forwarder, the pull client."""
