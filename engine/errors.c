#include "errors.h"

#include <string.h>

const char *cl_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case CL_ECORRUPT: return "corrupt data (checksum or format check failed)";
    case CL_ETRUNC: return "truncated data";
    case CL_EMISPLACED: return "valid batch found at the wrong shard or offset";
    case CL_EFAILED: return "shard failed after an I/O error and is read-only";
    case CL_ECLOSED: return "log is closed";
    case CL_EINVAL: return "invalid argument";
    case CL_ENOTFOUND: return "not found";
    case CL_EMANIFEST: return "manifest missing, invalid or mismatched";
    case CL_ETOOBIG: return "record or batch too large";
    case CL_ENOMEM: return "out of memory";
    case CL_EBUSY: return "too many pending appends";
    case CL_EDAMAGED: return "shard has unrepaired damage; writes refused";
    case CL_ESTALE: return "written in an older term; not the leader";
    case CL_ETIMEDOUT: return "timed out; the outcome is unknown";
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}
