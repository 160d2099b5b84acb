/* storage_end.h -- closes storage_begin.h.  No include guard, on purpose. */
#undef STORE_T
#undef REAL
#undef LOAD
#undef STORE
#undef STORE_NOT_NAN
#undef STORE_WIDE
#undef ROUND_WIDE
#undef STORAGE_IS_COMPUTE
#undef GRAD_T
#undef AUX_T
#undef AUX_LOAD
#undef STORAGE
