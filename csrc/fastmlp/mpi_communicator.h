// A Communicator over the MPI library that mpi4py loaded into this process, called natively (no
// Python in the training step) and without building against MPI: MPI_Iallreduce and MPI_Test are
// looked up at run time in mpi4py's extension module and its dependencies, and the handles
// (communicator, datatypes, MPI_SUM) come from mpi4py as integers. MPICH's handles are ints, Open
// MPI's and the MPI-5 ABI's pointers: handle_bytes (mpi4py's MPI._sizeof) says which.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "fastmlp/communicator.h"

namespace fastmlp {

struct MpiHandles {
  std::string library;  // the file of the loaded mpi4py.MPI extension module
  int handle_bytes = 0;  // sizeof(MPI_Comm) == sizeof(MPI_Datatype) == sizeof(MPI_Op) == sizeof(MPI_Request)
  int status_bytes = 0;  // sizeof(MPI_Status)
  uint64_t comm = 0, float_type = 0, double_type = 0, sum_op = 0;  // as mpi4py's MPI._handleof gives them
  int rank = 0, size = 1;
  double timeout_seconds = 600.0;  // a collective still pending after this long throws DistributedError
};

// Throws DistributedError when the library or its functions cannot be found.
std::shared_ptr<Communicator> make_mpi_communicator(const MpiHandles& handles);

}  // namespace fastmlp
