"""BatchNorm in Triton: ``triton_kernels`` (the kernels and their launch plans) and ``triton_bn`` (the autograd
function and the drop-in module). Importing the package imports neither, so neither triton nor torch."""
