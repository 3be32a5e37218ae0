"""What every layer needs of the machine: device and precision choice, and the process group."""
