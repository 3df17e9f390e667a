/* The runc baseline: a static `true`, so the comparison is container
 * start-up cost, not the cost of a libc loading. */
int main(void) { return 0; }
