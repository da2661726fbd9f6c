"""Framework adapters: the IIR neuron as a native SpikingJelly node and snnTorch neuron."""
