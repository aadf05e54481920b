# The C kernel (_kernel.c), built as an extension module only for its file: lovasz._ckernel opens that
# file with ctypes and declares each function's arguments there. Nothing is imported from the module.
