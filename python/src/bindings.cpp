// bloodcv._core: the C++ library for Python. Arrays cross without copies where their layout allows
// (C-contiguous float32 N×4 boxes are read in place; results hand over their C++ buffers). The
// package bloodcv wraps these functions so that torch tensors go in and come out as well.
#include "conversions.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "bloodcv C++ core (use the bloodcv package, which also takes torch tensors)";
  m.attr("__version__") = bloodcv::kVersion;
  bloodcv::python::bind_geometry(m);
  bloodcv::python::bind_stain(m);
  bloodcv::python::bind_decoders(m);
  bloodcv::python::bind_sources(m);
  bloodcv::python::bind_runtime(m);
  bloodcv::python::bind_eval(m);
}
